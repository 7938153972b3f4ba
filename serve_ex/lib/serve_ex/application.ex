defmodule ServeEx.Application do
  @moduledoc """
  The supervision tree, `:rest_for_one` because each child needs the ones before it:

  1. `ServeEx.ModelRegistry`: the models, loaded and warmed once;
  2. `ServeEx.HTTP.Waiters`, then the listeners of `ServeEx.HTTP`: the HTTP handlers
     waiting for replies, counted by monitor; health and metrics, up even while the
     broker is not, on a listener of their own; inference;
  3. `ServeEx.Connection`: the consuming connection, reconnecting with backoff;
  4. `ServeEx.ReplyConnection` (a second `ServeEx.Connection`): the one replies are
     published on, so that a broker-side close of the reply path never takes the
     consumer's deliveries with it;
  5. `ServeEx.Pipeline.Supervisor`: producer, processors, batchers, reply publisher.

  A dead connection manager restarts the pipeline after it; a dead pipeline leaves the
  models and the connections alone.

  Stopping (SIGTERM, `ServeEx.stop/0`) drains first: `prep_stop/1` runs
  `ServeEx.Drain`. If the top supervisor gives up, the application stops, and in a
  release (where it is permanent) the VM exits with a non-zero status, so that an
  orchestrator restarts it.
  """
  use Application

  alias ServeEx.{Config, Connection}

  @impl true
  def start(_type, _args) do
    ServeEx.Metrics.setup()
    ServeEx.InFlight.setup()
    ServeEx.Status.set_draining(false)

    if Application.get_env(:serve_ex, :start_service, true) do
      config = checked_config()

      children =
        [
          {ServeEx.ModelRegistry, {config.model_dir, config.model_poll_ms}},
          ServeEx.HTTP.Waiters
        ] ++
          ServeEx.HTTP.child_specs(config) ++
          [
            Supervisor.child_spec(
              {Connection, url: config.amqp_url, queue: config.request_queue, amqp: config.amqp},
              id: Connection
            ),
            Supervisor.child_spec(
              {Connection,
               url: config.amqp_url,
               queue: config.request_queue,
               name: ServeEx.ReplyConnection,
               amqp: config.amqp},
              id: ServeEx.ReplyConnection
            ),
            {ServeEx.Pipeline.Supervisor, config}
          ]

      with {:ok, pid} <- start_tree(children), do: {:ok, pid, config}
    else
      start_tree([])
    end
  end

  @impl true
  def prep_stop(%Config{} = config) do
    ServeEx.Drain.run(config.drain_timeout_ms)
    config
  end

  def prep_stop(state), do: state

  # The settings, the engine configured and the listeners' ports free, or one line that
  # says what is wrong and a non-zero exit: no crash report, no crash dump.
  defp checked_config do
    config = Config.from_env()
    configure_engine(config.engine_threads)
    port_free!("HTTP_PORT", config.http_ip, config.http_port)
    port_free!("HEALTH_PORT", config.http_ip, config.health_port)
    config
  rescue
    err in ArgumentError ->
      IO.puts(:stderr, "error: " <> Exception.message(err))
      System.halt(1)
  end

  defp port_free!(_variable, _ip, 0), do: :ok

  defp port_free!(variable, ip, port) do
    case :gen_tcp.listen(port, ip: ip, reuseaddr: true) do
      {:ok, socket} ->
        :gen_tcp.close(socket)

      {:error, reason} ->
        raise ArgumentError,
              "#{variable}=#{port}: cannot listen on #{:inet.ntoa(ip)}:#{port} (#{:inet.format_error(reason)})"
    end
  end

  # Before any model loads: the engine sizes its threads at its first call. What it then
  # runs on goes into the readiness report; a setting it cannot follow stops the start.
  defp configure_engine(n) do
    with {:error, {_code, message}} <- ServeEx.Engine.set_threads(n),
         do: raise(ArgumentError, "ENGINE_THREADS=#{n}: #{message}")

    case ServeEx.Engine.info() do
      {:ok, info} -> ServeEx.Status.set_engine(info)
      {:error, {_code, message}} -> raise ArgumentError, message
    end
  end

  defp start_tree(children),
    do: Supervisor.start_link(children, strategy: :rest_for_one, name: ServeEx.Supervisor)
end
