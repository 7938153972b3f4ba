defmodule ServeEx.Test.PoisonedEngine do
  @moduledoc """
  `ServeEx.Engine` with a bug planted for tests of the text scheduler: a text whose
  prompt starts with `"POISON"` makes every decoding step of its batch raise, and its
  generation alone raise too. Every other call is the real engine's.
  """

  alias ServeEx.Engine

  defdelegate decoding_batch(model, opts), to: Engine
  defdelegate leave(batch, id), to: Engine

  def join(batch, request) do
    with {:ok, id} <- Engine.join(batch, request) do
      if poisoned?(request), do: :persistent_term.put({__MODULE__, batch}, true)
      {:ok, id}
    end
  end

  def step(batch) do
    if :persistent_term.get({__MODULE__, batch}, false),
      do: raise("a planted bug in a decoding step")

    Engine.step(batch)
  end

  def generate_text_batch(model, requests) do
    if Enum.any?(requests, &poisoned?/1), do: raise("a planted bug in a generation")
    Engine.generate_text_batch(model, requests)
  end

  defp poisoned?(request), do: String.starts_with?(request.prompt, "POISON")
end
