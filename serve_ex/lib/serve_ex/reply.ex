defmodule ServeEx.Reply do
  @moduledoc "Reply bodies of wire version 1 (`shared_schema/wire/reply.schema.json`)."

  @doc """
  An error reply.

      iex> ServeEx.Reply.error(:unknown_model, "no model 'x' is served")
      ~s({"error":{"code":"unknown_model","message":"no model 'x' is served"},"ok":false,"v":1})
  """
  @spec error(atom(), String.t()) :: binary()
  def error(code, message),
    do: encode(%{"v" => 1, "ok" => false, "error" => error_map(code, message)})

  @doc """
  An `overloaded` reply with a hint of when to retry.

      iex> ServeEx.Reply.overloaded(40) |> :jsx.decode([:return_maps])
      %{"v" => 1, "ok" => false, "error" => %{"code" => "overloaded", "retry_after_ms" => 40, "message" => "the model has as many rows queued as it admits; retry in about 40 ms"}}
  """
  @spec overloaded(non_neg_integer()) :: binary()
  def overloaded(retry_after_ms) do
    encode(%{
      "v" => 1,
      "ok" => false,
      "error" => %{
        "code" => "overloaded",
        "message" =>
          "the model has as many rows queued as it admits; retry in about #{retry_after_ms} ms",
        "retry_after_ms" => retry_after_ms
      }
    })
  end

  @max_message_chars 300

  # An error message never grows with the input it describes.
  defp bounded(message) do
    if String.length(message) > @max_message_chars,
      do: String.slice(message, 0, @max_message_chars - 3) <> "...",
      else: message
  end

  @typedoc """
  A reply body: JSON (iodata); a binary reply of raw little-endian f32 tensors of one
  shape, back to back in the order of `fields` (the publisher puts the shape and the
  fields in AMQP headers); or the end of the stream `key`, which its publisher renders
  with `stream_end/2` once it knows how many frames went before.
  """
  @type body ::
          iodata()
          | {:f32, {non_neg_integer(), non_neg_integer()}, [String.t()], iodata()}
          | {:stream_end, reference(), {atom(), String.t()} | nil}

  @doc """
  A tensor reply: the shape and the tensor the engine produced, in the request's
  encoding. JSON is built as iodata: base64 needs no JSON escaping, and encoding a
  large string with jsx would cost more than the inference.

      iex> ServeEx.Reply.tensor({1, 2, "AACAPwAAAEA="}, :base64) |> IO.iodata_to_binary() |> :jsx.decode([:return_maps])
      %{"v" => 1, "ok" => true, "shape" => [1, 2], "dtype" => "f32", "data" => "AACAPwAAAEA="}
      iex> ServeEx.Reply.tensor({1, 2, <<0, 0, 128, 63, 0, 0, 0, 64>>}, :f32)
      {:f32, {1, 2}, ["data"], [<<0, 0, 128, 63, 0, 0, 0, 64>>]}
  """
  @spec tensor(ServeEx.Engine.tensor(), :base64 | :f32) :: body()
  def tensor({rows, cols, bytes}, :f32), do: {:f32, {rows, cols}, ["data"], [bytes]}

  def tensor({rows, cols, base64}, :base64) do
    [shape_prefix(rows, cols), ~s("data":"), base64, ~s("})]
  end

  @doc "An encode reply: the posterior mean and log-variance."
  @spec posterior(ServeEx.Engine.tensor(), ServeEx.Engine.tensor(), :base64 | :f32) :: body()
  def posterior({rows, cols, mu}, {_, _, logvar}, :f32),
    do: {:f32, {rows, cols}, ["mu", "logvar"], [mu, logvar]}

  def posterior({rows, cols, mu}, {_, _, logvar}, :base64) do
    [shape_prefix(rows, cols), ~s("mu":"), mu, ~s(","logvar":"), logvar, ~s("})]
  end

  defp shape_prefix(rows, cols) do
    [
      ~s({"v":1,"ok":true,"shape":[),
      Integer.to_string(rows),
      ",",
      Integer.to_string(cols),
      ~s(],"dtype":"f32",)
    ]
  end

  @doc """
  A frame of a streamed text: the text generated since the previous frame.

      iex> ServeEx.Reply.stream_chunk(0, "To be") |> :jsx.decode([:return_maps])
      %{"v" => 1, "ok" => true, "seq" => 0, "delta" => "To be"}
  """
  @spec stream_chunk(non_neg_integer(), String.t()) :: binary()
  def stream_chunk(seq, text),
    do: encode(%{"v" => 1, "ok" => true, "seq" => seq, "delta" => text})

  @doc """
  The last frame of a stream: `done`, with why the text ended (`t:finish_reason/0`), or
  with the error that ended the stream.

      iex> ServeEx.Reply.stream_end(3, :length) |> :jsx.decode([:return_maps])
      %{"v" => 1, "ok" => true, "seq" => 3, "done" => true, "finish_reason" => "length"}
      iex> ServeEx.Reply.stream_end(1, {:deadline_exceeded, "too late"}) |> :jsx.decode([:return_maps])
      %{"v" => 1, "ok" => false, "seq" => 1, "done" => true, "error" => %{"code" => "deadline_exceeded", "message" => "too late"}}
  """
  @spec stream_end(non_neg_integer(), finish_reason() | {atom(), String.t()}) :: binary()
  def stream_end(seq, {code, message}),
    do:
      encode(%{
        "v" => 1,
        "ok" => false,
        "seq" => seq,
        "done" => true,
        "error" => error_map(code, message)
      })

  def stream_end(seq, finish_reason) when finish_reason in [:length, :stop],
    do:
      encode(%{
        "v" => 1,
        "ok" => true,
        "seq" => seq,
        "done" => true,
        "finish_reason" => Atom.to_string(finish_reason)
      })

  defp error_map(code, message),
    do: %{"code" => Atom.to_string(code), "message" => bounded(message)}

  @typedoc "Why a text ended: its `max_new_tokens` were reached, or a stop string came."
  @type finish_reason :: :length | :stop

  @doc """
  A text reply: the prompt and its continuation, why the text ended, and how many new
  tokens were generated (a stop string's included, though the text leaves it out).
  """
  @spec text(String.t(), finish_reason(), non_neg_integer()) :: binary()
  def text(text, finish_reason, new_tokens),
    do:
      encode(%{
        "v" => 1,
        "ok" => true,
        "text" => text,
        "finish_reason" => Atom.to_string(finish_reason),
        "new_tokens" => new_tokens
      })

  defp encode(map), do: :jsx.encode(map)
end
