defmodule ServeEx.AMQP.Fake do
  @moduledoc """
  A fake AMQP client for unit tests. Every operation is reported to the process stored
  in the `:fake_amqp_owner` application env; a test delivers a message by sending
  `{:fake_deliver, payload, meta}` to the producer it saw in `{:consume, producer, ...}`.
  """
  @behaviour ServeEx.AMQP

  defp owner, do: Application.fetch_env!(:serve_ex, :fake_amqp_owner)
  defp report(event), do: send(owner(), event) && :ok

  defp idle_process, do: spawn(fn -> Process.sleep(:infinity) end)

  # Refuses as many connections as `:fake_connect_failures` says, like a broker that is down.
  @impl true
  def connect(_url) do
    case Application.get_env(:serve_ex, :fake_connect_failures, 0) do
      0 ->
        conn = idle_process()
        report({:connected, conn})
        {:ok, conn}

      n ->
        Application.put_env(:serve_ex, :fake_connect_failures, n - 1)
        {:error, :econnrefused}
    end
  end

  @impl true
  def close_connection(_conn), do: :ok
  @impl true
  def open_channel(_conn), do: {:ok, idle_process()}
  @impl true
  def close_channel(_chan), do: :ok
  @impl true
  def declare_topology(_chan, _queue), do: :ok
  @impl true
  def consume(chan, queue, prefetch), do: report({:consume, self(), chan, queue, prefetch})
  @impl true
  def ack(_chan, tag), do: report({:ack, tag})
  @impl true
  def reject(_chan, tag, requeue), do: report({:reject, tag, requeue})
  @impl true
  def confirm_select(_chan, _handler), do: :ok

  # Confirms each publish at once, numbering them as the broker would.
  @impl true
  def publish(_chan, routing_key, payload, correlation_id) do
    seqno = Process.get(:fake_seqno, 0) + 1
    Process.put(:fake_seqno, seqno)
    send(self(), {:fake_confirm, seqno})
    report({:published, routing_key, IO.iodata_to_binary(payload), correlation_id})
  end

  @impl true
  def classify({:fake_deliver, payload, meta}), do: {:deliver, payload, meta}
  def classify({:fake_confirm, seqno}), do: {:confirm, seqno, false, :ack}
  def classify(_), do: :other
end
