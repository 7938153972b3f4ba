defmodule ServeEx.Pipeline.TextSequence do
  @moduledoc """
  The text of one generation as its tokens come, one at a time: where it ends (a stop
  string), and which part of it a stream may send so far.

  A stream sends its first token at once (the time to first token is one step), then a
  chunk every 8 tokens: the new text since the last chunk, less the tail that could
  still turn out to be the start of a stop string (it is sent once the next tokens
  show it is not). When a stop string appears, the text ends just before
  it, and no chunk ever held any of it. The chunks are a function of the tokens alone,
  so a generation run again (alone, or on another node) cuts the same chunks.

      iex> alias ServeEx.Pipeline.TextSequence
      iex> seq = TextSequence.new(["\\n\\n"])
      iex> {:more, seq, "a"} = TextSequence.add(seq, "a")
      iex> {:more, seq, nil} = TextSequence.add(seq, "b")
      iex> {:stop, seq, "b"} = TextSequence.add(TextSequence.add(seq, "\\n") |> elem(1), "\\n")
      iex> seq.text
      "ab"
  """

  # New tokens per streamed chunk.
  @stream_tokens 8

  @typedoc """
  `text`: the new text so far (without the prompt); `sent`: its bytes already in a
  chunk; `tokens`: how many tokens came; `stops`: the stop strings, the longest of
  them `longest` bytes.
  """
  @type t :: %__MODULE__{
          text: binary(),
          sent: non_neg_integer(),
          tokens: non_neg_integer(),
          stops: [binary()],
          longest: non_neg_integer()
        }
  defstruct text: "", sent: 0, tokens: 0, stops: [], longest: 0

  @spec new([binary()]) :: t()
  def new(stops),
    do: %__MODULE__{
      stops: stops,
      longest: stops |> Enum.map(&byte_size/1) |> Enum.max(fn -> 0 end)
    }

  @doc """
  One more token's text. `{:stop, seq, chunk}`: a stop string came, the text ends
  before it and `chunk` is the text not yet sent (nil if none). `{:more, seq, chunk}`:
  `chunk` is what a stream sends now (nil between chunks, or when everything new may
  still be the start of a stop string).

      iex> alias ServeEx.Pipeline.TextSequence
      iex> chunks = Enum.map_reduce(String.codepoints("abcdefghij"), TextSequence.new([]), fn t, s ->
      ...>   {:more, s, chunk} = TextSequence.add(s, t)
      ...>   {chunk, s}
      ...> end) |> elem(0) |> Enum.reject(&is_nil/1)
      iex> chunks
      ["a", "bcdefgh"]
  """
  @spec add(t(), binary()) :: {:stop | :more, t(), binary() | nil}
  def add(%__MODULE__{} = seq, token_text) do
    before = byte_size(seq.text)
    seq = %{seq | text: seq.text <> token_text, tokens: seq.tokens + 1}

    case stop_at(seq, before) do
      nil when seq.tokens == 1 or rem(seq.tokens, @stream_tokens) == 0 ->
        take(seq, byte_size(seq.text) - held(seq))

      nil ->
        {:more, seq, nil}

      at ->
        {:more, seq, chunk} = take(%{seq | text: binary_part(seq.text, 0, at)}, at)
        {:stop, seq, chunk}
    end
  end

  @doc "The text not yet sent, at the end of the generation (nil if none)."
  @spec rest(t()) :: {t(), binary() | nil}
  def rest(seq) do
    {:more, seq, chunk} = take(seq, byte_size(seq.text))
    {seq, chunk}
  end

  # the text from `sent` up to byte `upto` as a chunk, if not empty
  defp take(%{sent: sent} = seq, upto) when upto > sent,
    do: {:more, %{seq | sent: upto}, binary_part(seq.text, sent, upto - sent)}

  defp take(seq, _upto), do: {:more, seq, nil}

  # Where the first stop string starts, if one has come. Only a match that ends in the
  # new token's text can be new, so the search starts a stop string's length before it.
  defp stop_at(%{stops: []}, _before), do: nil

  defp stop_at(%{stops: stops, text: text, longest: longest}, before) do
    from = max(before - longest + 1, 0)

    case :binary.match(text, stops, scope: {from, byte_size(text) - from}) do
      {at, _length} -> at
      :nomatch -> nil
    end
  end

  # Bytes at the end of the text that are the start of a stop string: a stream holds
  # them back. (A stop string is valid UTF-8, so such a tail starts on a character.)
  defp held(%{stops: stops, text: text}) do
    size = byte_size(text)

    Enum.reduce(stops, 0, fn stop, held ->
      longest = min(byte_size(stop) - 1, size)

      k =
        Enum.find(
          longest..1//-1,
          0,
          &(binary_part(text, size - &1, &1) == binary_part(stop, 0, &1))
        )

      max(held, k)
    end)
  end
end
