defmodule ServeEx.Pipeline.Supervisor do
  @moduledoc """
  The pipeline: a registry of stage names, the reply publisher, one batcher per
  model and lane (`ServeEx.Pipeline.Batcher.lanes/1`), the processors, and the
  producer last.

  Strategy `:one_for_all`: messages in flight belong to the producer's channel. If any
  stage dies, the messages it held can only be recovered by the broker, which
  requeues them when that channel closes; restarting every stage, the producer with
  it, does exactly that. A restart takes milliseconds.

  With no servable model there is no producer: a node that could only answer
  `unknown_model` takes no share of the queue, and `/readyz` says why it is not ready.
  """
  use Supervisor

  alias ServeEx.ModelRegistry
  require Logger
  alias ServeEx.Pipeline.{ReplyPublisher, Batcher, Processor, Producer}

  @spec start_link(ServeEx.Config.t()) :: Supervisor.on_start()
  def start_link(config) do
    :persistent_term.put({__MODULE__, :batching}, {config.batch_size, config.batch_timeout_ms})
    Supervisor.start_link(__MODULE__, config, name: __MODULE__)
  end

  @doc """
  Starts a batcher for a model id that appeared after the start (a hot-swapped
  directory gained a file). Without a running pipeline there is nothing to do.
  """
  @spec add_model(ServeEx.Engine.t()) :: :ok
  def add_model(model) do
    {size, timeout} = :persistent_term.get({__MODULE__, :batching}, {64, 0})

    ServeEx.Admission.setup(
      Batcher.admission_keys(model),
      :persistent_term.get({ServeEx.Admission, :max_rows}, 8 * size)
    )

    if Process.whereis(__MODULE__) do
      for lane <- Batcher.lanes(model) do
        spec = {Batcher, model: model, batch_size: size, batch_timeout_ms: timeout, lane: lane}
        _ = Supervisor.start_child(__MODULE__, spec)
      end
    end

    :ok
  end

  @impl true
  def init(config) do
    models = ModelRegistry.models()
    keys = models |> Map.values() |> Enum.flat_map(&Batcher.admission_keys/1)
    ServeEx.Admission.setup(keys, config.max_queued_rows)

    batchers =
      for {_id, model} <- models, lane <- Batcher.lanes(model) do
        {Batcher,
         model: model,
         batch_size: config.batch_size,
         batch_timeout_ms: config.batch_timeout_ms,
         lane: lane}
      end

    processors =
      for index <- 0..(config.processors - 1), do: {Processor, {index, config.reply_queue_prefix}}

    producer =
      if batchers == [] do
        Logger.error("not consuming #{config.request_queue}: no model is served")
        []
      else
        [
          {Producer,
           queue: config.request_queue,
           prefetch: config.prefetch,
           processors: config.processors,
           amqp: config.amqp}
        ]
      end

    children =
      [
        {Registry, keys: :unique, name: ServeEx.Pipeline.Registry},
        {ReplyPublisher, amqp: config.amqp}
      ] ++
        batchers ++ processors ++ producer

    Supervisor.init(children, strategy: :one_for_all, max_restarts: 20, max_seconds: 10)
  end
end
