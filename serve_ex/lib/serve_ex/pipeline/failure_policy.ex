defmodule ServeEx.Pipeline.FailurePolicy do
  @moduledoc """
  The failure policy, as functions of the outcome alone (they log, and touch nothing
  else): for each request's outcome, what reply to
  publish and how to settle its delivery. `ServeEx.Pipeline.ReplyPublisher` carries the
  decisions out.

  - a reply (a result, or an error reply for invalid input) is acked once confirmed:
    invalid input is never requeued;
  - a failed message (a crash while handling it) is requeued once; failing again on
    its redelivery, it gets an `internal` error reply and is rejected without requeue,
    so it lands in the dead-letter queue (`ServeEx.Topology`) and is not retried forever;
  - a message that cannot be answered (no or unaccepted `reply_to`) is dead-lettered;
  - an HTTP request has no redelivery: a failure is an `internal` error reply at once.
  """
  require Logger

  alias ServeEx.Reply

  @typedoc "What became of a request: a reply, a failure, or no way to answer it."
  @type outcome ::
          {:reply, ServeEx.Reply.body(), atom()} | {:failed, String.t()} | {:dead, String.t()}

  @doc """
  The failure policy: what to publish for an outcome, and how to settle its delivery.

      iex> msg = %ServeEx.Message{payload: "", reply_to: "q", correlation_id: nil, acknowledger: nil, redelivered: false, received_at: 0}
      iex> ServeEx.Pipeline.FailurePolicy.decide({msg, {:failed, "boom"}}) |> Tuple.delete_at(0)
      {{:nothing, :retried}, :requeue}
  """
  @spec decide({ServeEx.Message.t(), outcome()}) ::
          {ServeEx.Message.t(), {:publish, ServeEx.Reply.body(), atom()} | {:nothing, atom()},
           :ack | :requeue | :dead_letter}
  def decide({message, {:reply, body, label}}), do: {message, {:publish, body, label}, :ack}

  def decide({message, {:failed, reason}}) do
    if message.redelivered do
      Logger.error("request failed twice, dead-lettering it: #{reason}")
      body = Reply.error(:internal, "the service failed on this request twice")
      {message, {:publish, body, :dead_lettered}, :dead_letter}
    else
      {message, {:nothing, :retried}, :requeue}
    end
  end

  def decide({message, {:dead, reason}}) do
    Logger.error("dead-lettering a request: #{reason}")
    {message, {:nothing, :dead_lettered}, :dead_letter}
  end

  @doc """
  The failure policy of an HTTP request: there is no redelivery to retry on, so a
  failure is an `internal` error reply at once.

      iex> {body, :internal} = ServeEx.Pipeline.FailurePolicy.decide_http({:failed, "boom"})
      iex> body =~ "internal"
      true
  """
  # (an HTTP request is never `{:dead, _}`: it has no reply_to to refuse)
  @spec decide_http({:reply, ServeEx.Reply.body(), atom()} | {:failed, String.t()}) ::
          {ServeEx.Reply.body(), atom()}
  def decide_http({:reply, body, label}), do: {body, label}

  def decide_http({:failed, reason}) do
    Logger.error("an HTTP request failed: #{reason}")
    {Reply.error(:internal, "the service failed on this request"), :internal}
  end
end
