defmodule ServeEx.MixProject do
  use Mix.Project

  # Hex is out of reach: the Erlang libraries come from RabbitMQ's Debian package.
  # RABBITMQ_PLUGINS_DIR overrides where to find them.
  @plugin_apps ~w(amqp_client rabbit_common credentials_obfuscation recon jsx cowboy cowlib ranch
                  prometheus quantile_estimator)a

  def project do
    add_plugin_paths()

    [
      app: :serve_ex,
      version: "0.1.0",
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [serve_ex: [include_executables_for: [:unix]]]
    ]
  end

  def application do
    [
      mod: {ServeEx.Application, []},
      extra_applications:
        [:logger, :crypto, :ssl, :public_key, :sasl, :syntax_tools, :xmerl, :inets] ++
          @plugin_apps
    ]
  end

  # the benchmark's load generator and no-op responder (bench/lib) are not part of the
  # release (prod)
  defp elixirc_paths(:test), do: ["lib", "test/support", "bench/lib"]
  defp elixirc_paths(:prod), do: ["lib"]
  defp elixirc_paths(_), do: ["lib", "bench/lib"]

  defp plugins_dir do
    System.get_env("RABBITMQ_PLUGINS_DIR") ||
      "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins"
      |> Path.wildcard()
      |> Enum.sort()
      |> List.last()
  end

  defp add_plugin_paths do
    dir =
      plugins_dir() || Mix.raise("RabbitMQ's Erlang libraries not found; install rabbitmq-server")

    for app <- @plugin_apps do
      case Path.wildcard(Path.join(dir, "#{app}-*/ebin")) do
        [ebin | _] -> Code.prepend_path(ebin)
        [] -> Mix.raise("#{app} not found under #{dir}")
      end
    end
  end
end
