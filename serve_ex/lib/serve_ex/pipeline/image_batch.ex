defmodule ServeEx.Pipeline.ImageBatch do
  @moduledoc """
  The work of an image model's batch (`ServeEx.Pipeline.Batcher`'s handler): one
  engine call per op present in the batch (inline or on a dirty CPU scheduler, as
  `ServeEx.Engine.runs_inline?/2` says), and one outcome per request: its tensor, its
  posterior, or the engine's error.
  """
  @behaviour ServeEx.Pipeline.Batcher

  alias ServeEx.{Engine, Reply}

  @doc "Runs `messages` through `model`, one engine call per op; one outcome per message."
  @impl true
  def handle_batch(model, messages) do
    messages
    |> Enum.group_by(& &1.request.op)
    |> Enum.flat_map(fn {op, group} -> Enum.zip(group, run(model, op, group)) end)
    |> Enum.map(fn {message, result} -> {message, outcome(result, message)} end)
  end

  defp run(model, "generate", messages),
    do:
      Engine.generate_batch(
        model,
        Enum.map(messages, &{args(&1).n, args(&1).seed, args(&1).encoding})
      )

  defp run(model, "decode", messages),
    do:
      Engine.decode_batch(model, Enum.map(messages, &f32_rows(args(&1).rows, args(&1).encoding)))

  defp run(model, "encode", messages),
    do:
      Engine.encode_batch(model, Enum.map(messages, &f32_rows(args(&1).rows, args(&1).encoding)))

  defp args(message), do: message.request.args

  defp f32_rows([first | _] = rows, encoding) do
    {for(row <- rows, v <- row, into: <<>>, do: <<v::float-32-little>>), length(first), encoding}
  end

  # a file the engine refuses is the service's failure, not the client's
  defp outcome({:error, {:bad_model, text}}, message),
    do: outcome({:error, {:internal, text}}, message)

  defp outcome({:ok, {mu, logvar}}, %{request: %{op: "encode", args: args}}),
    do: {:reply, Reply.posterior(mu, logvar, args.encoding), :ok}

  defp outcome({:ok, tensor}, %{request: %{args: args}}),
    do: {:reply, Reply.tensor(tensor, args.encoding), :ok}

  defp outcome({:error, {code, text}}, _message), do: {:reply, Reply.error(code, text), code}
end
