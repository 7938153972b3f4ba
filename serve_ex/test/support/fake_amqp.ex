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
  def direct_reply_node(_conn), do: {:ok, "reply@1"}
  @impl true
  def consume(chan, queue, prefetch) do
    report({:consume, self(), chan, queue, prefetch})
    {:ok, "fake-consumer"}
  end

  # The broker's cancel_ok reaches the consumer after the deliveries sent before it.
  @impl true
  def cancel(_chan, _tag) do
    send(self(), :fake_cancel_ok)
    report(:cancelled)
  end

  @impl true
  def requeue_all(_chan), do: report(:requeued_all)
  @impl true
  def ack(_chan, tag), do: report({:ack, tag})
  @impl true
  def reject(_chan, tag, requeue), do: report({:reject, tag, requeue})
  @impl true
  def confirm_select(_chan, _handler), do: :ok

  # Confirms each publish at once, as the broker would; a routing key listed in
  # `:fake_unroutable` is returned first, one in `:fake_refused` is nacked.
  @impl true
  def publish(_chan, routing_key, payload, correlation_id, seqno, _model_version) do
    if routing_key in Application.get_env(:serve_ex, :fake_unroutable, []),
      do: send(self(), {:fake_return, seqno})

    verdict =
      if routing_key in Application.get_env(:serve_ex, :fake_refused, []), do: :nack, else: :ack

    send(self(), {:fake_confirm, seqno, verdict})
    report({:published, routing_key, materialize(payload), correlation_id})
  end

  defp materialize({:f32, shape, fields, data}),
    do: {:f32, shape, fields, IO.iodata_to_binary(data)}

  defp materialize(json), do: IO.iodata_to_binary(json)

  @impl true
  def classify({:fake_deliver, payload, meta}), do: {:deliver, payload, meta}
  def classify({:fake_confirm, seqno, verdict}), do: {:confirm, seqno, false, verdict}
  def classify({:fake_return, seqno}), do: {:returned, seqno}
  def classify(:fake_cancel_ok), do: :cancel_ok
  def classify(_), do: :other
end
