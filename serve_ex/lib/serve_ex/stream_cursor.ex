defmodule ServeEx.StreamCursor do
  @moduledoc """
  Numbers the chunk frames of one streamed generation, across restarts. A generation
  that is run again (its batch crashed and is retried one request at a time) sends its
  chunks again from the first: the same text, since its seed is the same. The frames
  already sent are not sent twice: after `restart/1`, the repeated chunks are skipped,
  and numbering goes on from the first chunk not yet sent.

      iex> alias ServeEx.StreamCursor
      iex> {{:send, 0}, c} = StreamCursor.chunk(%StreamCursor{})
      iex> {{:send, 1}, c} = StreamCursor.chunk(c)
      iex> c = StreamCursor.restart(c)
      iex> {:skip, c} = StreamCursor.chunk(c)
      iex> {:skip, c} = StreamCursor.chunk(c)
      iex> {{:send, 2}, c} = StreamCursor.chunk(c)
      iex> c.next
      3
  """

  @typedoc "`next`: the next frame's number; `seen`: chunks of the current run so far."
  @type t :: %__MODULE__{next: non_neg_integer(), seen: non_neg_integer()}
  defstruct next: 0, seen: 0

  @doc "One more chunk of the current run: send it as frame `seq`, or skip a repeat."
  @spec chunk(t()) :: {{:send, non_neg_integer()} | :skip, t()}
  def chunk(%__MODULE__{next: next, seen: seen} = cursor) when seen < next,
    do: {:skip, %{cursor | seen: seen + 1}}

  def chunk(%__MODULE__{next: next, seen: seen}),
    do: {{:send, next}, %__MODULE__{next: next + 1, seen: seen + 1}}

  @doc """
  One more chunk's frame, `{seq, json}`, or nil for a chunk already sent.

      iex> {{0, json}, _cursor} = ServeEx.StreamCursor.frame(%ServeEx.StreamCursor{}, "ab")
      iex> json
      ~s({"delta":"ab","ok":true,"seq":0,"v":1})
  """
  @spec frame(t(), String.t()) :: {{non_neg_integer(), binary()} | nil, t()}
  def frame(cursor, text) do
    case chunk(cursor) do
      {:skip, cursor} -> {nil, cursor}
      {{:send, seq}, cursor} -> {{seq, ServeEx.Reply.stream_chunk(seq, text)}, cursor}
    end
  end

  @doc """
  The stream's last frame, `{seq, json}`: `done`, with why the text ended, or with the
  error (`{code, message}`) that ended it.
  """
  @spec last(t(), ServeEx.Reply.finish_reason() | {atom(), String.t()}) ::
          {non_neg_integer(), binary()}
  def last(cursor, ending), do: {cursor.next, ServeEx.Reply.stream_end(cursor.next, ending)}

  @doc """
  A cursor for a stream whose client already has the frames up to `seq`: the first
  `seq + 1` chunks are skipped, and numbering goes on from `seq + 1`.

      iex> alias ServeEx.StreamCursor
      iex> {:skip, c} = StreamCursor.chunk(StreamCursor.after_frame(0))
      iex> {{:send, 1}, _c} = StreamCursor.chunk(c)
  """
  @spec after_frame(non_neg_integer()) :: t()
  def after_frame(seq), do: %__MODULE__{next: seq + 1}

  @doc "The generation runs again from its first token."
  @spec restart(t()) :: t()
  def restart(cursor), do: %{cursor | seen: 0}
end
