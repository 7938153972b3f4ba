defmodule ServeEx.AMQP.Fake do
  @moduledoc """
  A fake AMQP client for unit tests. A test makes itself a broker with `url/2` and
  starts its connections on that URL; every operation on that URL's connections and
  channels is reported to the test process, so tests that use different URLs can run
  at once. A test delivers a message by sending `{:fake_deliver, payload, meta}` to the
  producer it saw in `{:consume, producer, ...}`.

  The per-URL settings, kept in the ETS table `test_helper.exs` creates:
  - `connect_failures`: how many connects are refused first, like a broker that is down;
  - `unroutable`: routing keys whose replies are returned (no queue took them);
  - `refused`: routing keys whose replies the broker nacks.
  """
  @behaviour ServeEx.AMQP

  @table :serve_ex_fake_amqp

  @doc "The table of the fakes' settings; `test_helper.exs` creates it once."
  @spec create_table() :: :ok
  def create_table do
    :ets.new(@table, [:named_table, :public, :set])
    :ok
  end

  @doc "A new fake broker's URL, reporting to `owner`."
  @spec url(pid(), keyword()) :: String.t()
  def url(owner, settings \\ []) do
    url = "fake://broker-#{System.unique_integer([:positive])}"
    settings = Keyword.validate!(settings, connect_failures: 0, unroutable: [], refused: [])
    :ets.insert(@table, {url, Map.new([owner: owner] ++ settings)})
    url
  end

  @doc "Changes one setting of the fake broker at `url`."
  @spec set(String.t(), atom(), term()) :: :ok
  def set(url, key, value) do
    :ets.insert(@table, {url, %{settings(url) | key => value}})
    :ok
  end

  defp settings(url), do: :ets.lookup_element(@table, url, 2)
  defp url_of(pid), do: :ets.lookup_element(@table, pid, 2)
  defp report(pid, event), do: send(settings(url_of(pid)).owner, event) && :ok

  # an idle process standing for a connection or channel of the broker at `url`
  defp idle_process(url) do
    pid = spawn(fn -> Process.sleep(:infinity) end)
    :ets.insert(@table, {pid, url})
    pid
  end

  @impl true
  def connect(url, _name) do
    case settings(url).connect_failures do
      0 ->
        conn = idle_process(url)
        report(conn, {:connected, conn})
        {:ok, conn}

      n ->
        set(url, :connect_failures, n - 1)
        {:error, :econnrefused}
    end
  end

  @impl true
  def close_connection(_conn), do: :ok
  @impl true
  def open_channel(conn), do: {:ok, idle_process(url_of(conn))}
  @impl true
  def close_channel(_chan), do: :ok
  @impl true
  def declare_topology(_chan, _queue), do: :ok
  @impl true
  def direct_reply_node(_conn), do: {:ok, "reply@1"}
  @impl true
  def consume(chan, queue, prefetch) do
    report(chan, {:consume, self(), chan, queue, prefetch})
    {:ok, "fake-consumer"}
  end

  # The broker's cancel_ok reaches the consumer after the deliveries sent before it.
  @impl true
  def cancel(chan, _tag) do
    send(self(), :fake_cancel_ok)
    report(chan, :cancelled)
  end

  @impl true
  def requeue_all(chan), do: report(chan, :requeued_all)
  @impl true
  def ack(chan, tag), do: report(chan, {:ack, tag})
  @impl true
  def reject(chan, tag, requeue), do: report(chan, {:reject, tag, requeue})
  @impl true
  def confirm_select(_chan, _handler), do: :ok

  # Confirms each publish at once, as the broker would; a routing key listed in
  # `unroutable` is returned first, one in `refused` is nacked.
  @impl true
  def publish(chan, routing_key, payload, correlation_id, seqno, _model_version) do
    settings = settings(url_of(chan))
    if routing_key in settings.unroutable, do: send(self(), {:fake_return, seqno})
    verdict = if routing_key in settings.refused, do: :nack, else: :ack
    send(self(), {:fake_confirm, seqno, verdict})
    report(chan, {:published, routing_key, materialize(payload), correlation_id})
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
