defmodule ServeEx.Drain do
  @moduledoc """
  A graceful stop. On SIGTERM the VM runs `init:stop/0`, which stops the application;
  its `prep_stop` runs `run/1` before any process is terminated, so the connections
  are still up:

  1. readiness goes false at once (`/readyz` answers 503);
  2. the consumer is cancelled (`basic.cancel`): the broker delivers nothing more, and
     another node on the queue takes the new work;
  3. work in flight finishes: its replies are published, confirmed, and acked, and
     the HTTP requests under way are answered (new ones get 503);
  4. whatever is still unsettled after the drain timeout (`DRAIN_TIMEOUT_MS`, default
     10 s) is nacked with requeue, for another node or the next start;
  5. then the application stops and the VM exits with status 0.

  `ServeEx.stop/0` does the same from inside the node.
  """
  require Logger

  alias ServeEx.{InFlight, Metrics, Status}
  alias ServeEx.Pipeline.Producer

  @poll_ms 5

  @doc "Drains the node; returns how many deliveries had to be requeued."
  @spec run(non_neg_integer()) :: non_neg_integer()
  def run(timeout_ms) do
    started = System.monotonic_time(:millisecond)
    Status.set_draining(true)
    Logger.info("draining: readiness is false, cancelling the consumer")

    requeued =
      if Process.whereis(Producer) do
        call_quietly(&Producer.cancel/0)
        wait_for_settled(started + timeout_ms)
        left = max(InFlight.count(), 0)
        if left > 0, do: call_quietly(&Producer.requeue_all/0)
        left
      else
        0
      end

    ms = System.monotonic_time(:millisecond) - started
    Metrics.drain(ms)
    Logger.info("drained in #{ms} ms; #{requeued} deliveries requeued")
    requeued
  end

  defp wait_for_settled(deadline) do
    busy = InFlight.count() > 0 or InFlight.http_count() > 0

    if busy and System.monotonic_time(:millisecond) < deadline do
      Process.sleep(@poll_ms)
      wait_for_settled(deadline)
    end
  end

  # A producer that is gone or stuck must not stop the drain: its channel's deliveries
  # go back to the queue when the node exits anyway.
  defp call_quietly(fun) do
    fun.()
  catch
    :exit, reason ->
      Logger.warning("drain: the producer did not answer: #{inspect(reason, limit: 5)}")
  end
end
