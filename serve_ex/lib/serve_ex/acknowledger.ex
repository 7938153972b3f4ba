defmodule ServeEx.Acknowledger do
  @moduledoc """
  Where a request's answer goes and how its arrival is settled, by where the request
  came from (the role of `Broadway.Acknowledger`). A message's `acknowledger` is
  `{module, ack_ref, ack_data}`, and `module` implements this behaviour:
  - `ServeEx.Pipeline.ReplyPublisher` for an AMQP delivery (`ack_ref` the client module
    and the channel that received it, `ack_data` its delivery tag): the reply is
    published on the broker, and the delivery settled once the broker confirms it;
  - `ServeEx.HTTP.Acknowledger` for an HTTP request (the waiting handler and a
    reference): the reply goes straight to the handler.

  The pipeline calls the functions below and never looks inside an acknowledger.
  """
  alias ServeEx.Message

  @type t :: {module(), term(), term()}

  @doc "Answers the messages with their outcomes and settles them."
  @callback settle([{Message.t(), ServeEx.Pipeline.FailurePolicy.outcome()}]) :: :ok

  @doc """
  Where a stream's chunks go, as `{process, tag}`: the process receives
  `{:stream_chunk, tag, text}` for each chunk, and `{:stream_restart, tag}` when the
  text is computed again from its first token.
  """
  @callback stream_target(Message.t()) :: {GenServer.server(), term()}

  @doc "The process whose exit means the caller hung up (its work may stop), or nil."
  @callback caller(Message.t()) :: pid() | nil

  @doc "Settles each message through its own acknowledger."
  @spec settle([{Message.t(), ServeEx.Pipeline.FailurePolicy.outcome()}]) :: :ok
  def settle(outcomes) do
    outcomes
    |> Enum.group_by(fn {message, _outcome} -> module(message) end)
    |> Enum.each(fn {module, outcomes} -> :ok = module.settle(outcomes) end)
  end

  @doc "The message's `c:stream_target/1`."
  @spec stream_target(Message.t()) :: {GenServer.server(), term()}
  def stream_target(message), do: module(message).stream_target(message)

  @doc "The message's `c:caller/1`."
  @spec caller(Message.t()) :: pid() | nil
  def caller(message), do: module(message).caller(message)

  defp module(%Message{acknowledger: {module, _ref, _data}}), do: module
end
