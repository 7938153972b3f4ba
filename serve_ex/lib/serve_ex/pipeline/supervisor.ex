defmodule ServeEx.Pipeline.Supervisor do
  @moduledoc """
  The pipeline: a registry of stage names, the reply publisher, one worker per model
  (`ServeEx.Pipeline.Workers`: a batcher, or a GPT's text scheduler), the processors,
  and the producer last.

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
  alias ServeEx.Pipeline.{ReplyPublisher, Processor, Producer, Workers}

  @spec start_link(ServeEx.Config.t()) :: Supervisor.on_start()
  def start_link(config) do
    :persistent_term.put({__MODULE__, :settings}, settings(config))
    Supervisor.start_link(__MODULE__, config, name: __MODULE__)
  end

  defp reply_policy(config),
    do: %{prefix: config.reply_queue_prefix, require_user_id: config.amqp_require_user_id}

  defp settings(config),
    do: Map.take(config, [:batch_size, :batch_timeout_ms, :max_sequences, :max_queued_rows])

  @doc """
  Starts a worker for a model id that appeared after the start (a hot-swapped
  directory gained a file). Without a running pipeline there is nothing to do.
  """
  @spec add_model(ServeEx.Engine.t()) :: :ok
  def add_model(model) do
    case :persistent_term.get({__MODULE__, :settings}, nil) do
      nil ->
        :ok

      settings ->
        ServeEx.Admission.setup(Workers.admission_keys(model), settings.max_queued_rows)

        if Process.whereis(__MODULE__) do
          for spec <- Workers.child_specs(model, settings),
              do: _ = Supervisor.start_child(__MODULE__, spec)
        end

        :ok
    end
  end

  @impl true
  def init(config) do
    models = ModelRegistry.models() |> Map.values()

    ServeEx.Admission.setup(
      Enum.flat_map(models, &Workers.admission_keys/1),
      config.max_queued_rows
    )

    workers = Enum.flat_map(models, &Workers.child_specs(&1, settings(config)))

    processors =
      for index <- 0..(config.processors - 1), do: {Processor, {index, reply_policy(config)}}

    producer =
      if workers == [] do
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
        workers ++ processors ++ producer

    Supervisor.init(children, strategy: :one_for_all, max_restarts: 20, max_seconds: 10)
  end
end
