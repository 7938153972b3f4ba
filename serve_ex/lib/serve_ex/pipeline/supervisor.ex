defmodule ServeEx.Pipeline.Supervisor do
  @moduledoc """
  The pipeline: a registry of stage names, the reply publisher, one worker per model
  (`ServeEx.Pipeline.Workers`: a batcher, or a GPT's text scheduler), the
  `ServeEx.Pipeline.ModelWatcher` that adds the workers of models that appear later,
  the processors, and the producer last. Each is handed its settings as arguments.

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
  alias ServeEx.Pipeline.{ModelWatcher, ReplyPublisher, Processor, Producer, Workers}

  @spec start_link(ServeEx.Config.t()) :: Supervisor.on_start()
  def start_link(config), do: Supervisor.start_link(__MODULE__, config, name: __MODULE__)

  defp reply_policy(config),
    do: %{prefix: config.reply_queue_prefix, require_user_id: config.amqp_require_user_id}

  # the workers' settings (`t:ServeEx.Pipeline.Workers.settings/0`)
  defp settings(config), do: Map.take(config, [:batch_size, :batch_timeout_ms, :max_sequences])

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
        workers ++ [{ModelWatcher, settings(config)}] ++ processors ++ producer

    Supervisor.init(children, strategy: :one_for_all, max_restarts: 20, max_seconds: 10)
  end
end
