defmodule ServeEx.Pipeline.Supervisor do
  @moduledoc """
  The pipeline: a registry of stage names, the reply publisher, one batcher per
  model, the processors, and the producer last.

  Strategy `:one_for_all`: messages in flight belong to the producer's channel. If any
  stage dies, the messages it held can only be recovered by the broker, which
  requeues them when that channel closes; restarting every stage, the producer with
  it, does exactly that. A restart takes milliseconds.
  """
  use Supervisor

  alias ServeEx.ModelRegistry
  alias ServeEx.Pipeline.{Acknowledger, Batcher, Processor, Producer}

  @spec start_link(ServeEx.Config.t()) :: Supervisor.on_start()
  def start_link(config), do: Supervisor.start_link(__MODULE__, config, name: __MODULE__)

  @impl true
  def init(config) do
    batchers =
      for {_id, model} <- ModelRegistry.models() do
        {Batcher,
         model: model, batch_size: config.batch_size, batch_timeout_ms: config.batch_timeout_ms}
      end

    processors = for index <- 0..(config.processors - 1), do: {Processor, index}

    children =
      [{Registry, keys: :unique, name: ServeEx.Pipeline.Registry}, Acknowledger] ++
        batchers ++
        processors ++
        [
          {Producer,
           queue: config.request_queue, prefetch: config.prefetch, processors: config.processors}
        ]

    Supervisor.init(children, strategy: :one_for_all, max_restarts: 20, max_seconds: 10)
  end
end
