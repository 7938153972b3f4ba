defmodule ServeEx.Pipeline.Workers do
  @moduledoc """
  Which process computes a model's requests: a GPT's text goes to its
  `ServeEx.Pipeline.TextScheduler` (continuous batching over a decoding batch), an
  image model's requests to its `ServeEx.Pipeline.Batcher`. Each counts its admitted
  work under a key of its own (`ServeEx.Admission`).
  """

  alias ServeEx.Pipeline.{Batcher, TextScheduler}

  @typedoc "The settings a model's worker is started with (`ServeEx.Config`)."
  @type settings :: %{
          batch_size: pos_integer(),
          batch_timeout_ms: non_neg_integer(),
          max_sequences: pos_integer()
        }

  @doc "The child spec of `model`'s worker."
  @spec child_spec(ServeEx.Engine.t(), settings()) :: Supervisor.child_spec()
  def child_spec(%{arch: :gpt} = model, settings),
    do: TextScheduler.child_spec(model: model, max_sequences: settings.max_sequences)

  def child_spec(model, settings),
    do:
      Batcher.child_spec(
        model: model,
        batch_size: settings.batch_size,
        batch_timeout_ms: settings.batch_timeout_ms
      )

  @doc "The admission key of `model`'s requests."
  @spec admission_key(ServeEx.Engine.t()) :: ServeEx.Admission.key()
  def admission_key(model), do: worker(model).admission_key(model.id)

  @doc "Hands a validated message to its model's worker."
  @spec add(ServeEx.Message.t()) :: :ok
  def add(message), do: worker(message.request.model).add(message)

  defp worker(%{arch: :gpt}), do: TextScheduler
  defp worker(_model), do: Batcher
end
