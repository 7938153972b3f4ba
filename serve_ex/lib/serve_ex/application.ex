defmodule ServeEx.Application do
  @moduledoc """
  The supervision tree, `:rest_for_one` because each child needs the ones before it:

  1. `ServeEx.ModelRegistry`: the models, loaded once;
  2. `ServeEx.HTTP`: health and metrics, up even while the broker is not;
  3. `ServeEx.Connection`: the broker connection, reconnecting with backoff;
  4. `ServeEx.Pipeline.Supervisor`: producer, processors, batchers, reply publisher.

  A dead connection manager restarts the pipeline after it; a dead pipeline leaves the
  models and the connection alone.
  """
  use Application

  @impl true
  def start(_type, _args) do
    ServeEx.Metrics.setup()

    children =
      if Application.get_env(:serve_ex, :start_service, true) do
        config = ServeEx.Config.from_env()
        # read by the engine's thread pool when the first model loads
        System.put_env("RAYON_NUM_THREADS", Integer.to_string(config.engine_threads))

        [
          {ServeEx.ModelRegistry, config.model_dir},
          {ServeEx.HTTP, config},
          {ServeEx.Connection, url: config.amqp_url, queue: config.request_queue},
          {ServeEx.Pipeline.Supervisor, config}
        ]
      else
        []
      end

    Supervisor.start_link(children, strategy: :rest_for_one, name: ServeEx.Supervisor)
  end
end
