defmodule ServeEx.Pipeline.Workers do
  @moduledoc """
  Which process computes a model's requests: a GPT's text goes to its
  `ServeEx.Pipeline.TextScheduler` for the text's lane (continuous batching over a
  decoding batch), an image model's requests to its `ServeEx.Pipeline.Batcher`, whose
  handler `ServeEx.Pipeline.ImageBatch` does the model's work. Each
  counts its admitted work under a key of its own (`ServeEx.Admission`).
  """

  alias ServeEx.Pipeline.{Batcher, ImageBatch, TextScheduler}

  @typedoc "The settings a model's worker is started with (`ServeEx.Config`)."
  @type settings :: %{
          batch_size: pos_integer(),
          batch_timeout_ms: non_neg_integer(),
          max_sequences: pos_integer()
        }

  @doc "The child specs of `model`'s workers: a batcher, or a text scheduler per lane."
  @spec child_specs(ServeEx.Engine.t(), settings()) :: [Supervisor.child_spec()]
  def child_specs(%{arch: :gpt} = model, settings) do
    for lane <- TextScheduler.lanes(),
        do:
          TextScheduler.child_spec(
            model: model,
            lane: lane,
            max_sequences: settings.max_sequences
          )
  end

  def child_specs(model, settings) do
    [
      Batcher.child_spec(
        model: model,
        handler: ImageBatch,
        batch_size: settings.batch_size,
        batch_timeout_ms: settings.batch_timeout_ms
      )
    ]
  end

  @doc "The admission keys of `model`'s workers."
  @spec admission_keys(ServeEx.Engine.t()) :: [ServeEx.Admission.key()]
  def admission_keys(%{arch: :gpt} = model),
    do: for(lane <- TextScheduler.lanes(), do: TextScheduler.admission_key(model.id, lane))

  def admission_keys(model), do: [Batcher.admission_key(model.id)]

  @doc "The admission key of a validated message: its worker's."
  @spec admission_key(ServeEx.Message.t()) :: ServeEx.Admission.key()
  def admission_key(%{request: %{model: %{arch: :gpt}} = request} = message),
    do: TextScheduler.admission_key(message.model_id, TextScheduler.lane(request))

  def admission_key(message), do: Batcher.admission_key(message.model_id)

  @doc "Hands a validated message to its model's worker."
  @spec add(ServeEx.Message.t()) :: :ok
  def add(%{request: %{model: %{arch: :gpt}}} = message), do: TextScheduler.add(message)
  def add(message), do: Batcher.add(message)
end
