defmodule ServeEx.AMQP.Client do
  @moduledoc """
  `ServeEx.AMQP` over RabbitMQ's Erlang `amqp_client`. The request queue is a durable
  quorum queue: unacked work is redelivered when a consumer dies, and its delivery
  limit dead-letters a message that keeps killing consumers. See `ServeEx.Topology`.
  """
  @behaviour ServeEx.AMQP

  import ServeEx.AMQP.Records

  alias ServeEx.Topology

  @impl true
  def connect(url, name) do
    with {:ok, params} <- :amqp_uri.parse(String.to_charlist(url)) do
      properties = [{"connection_name", :longstr, name}]
      :amqp_connection.start(r_amqp_params_network(params, client_properties: properties))
    end
  end

  @impl true
  def close_connection(conn) do
    _ = catch_exit(fn -> :amqp_connection.close(conn) end)
    :ok
  end

  # open_channel may also answer a bare :closing (the connection is going down); every
  # answer but {:ok, chan} is an error for the caller.
  @impl true
  def open_channel(conn) do
    case :amqp_connection.open_channel(conn) do
      {:ok, chan} -> {:ok, chan}
      {:error, reason} -> {:error, reason}
      other -> {:error, other}
    end
  catch
    :exit, reason -> {:error, {:exit, reason}}
  end

  @impl true
  def close_channel(chan) do
    _ = catch_exit(fn -> :amqp_channel.close(chan) end)
    :ok
  end

  @impl true
  def declare_topology(chan, queue) do
    exchange_declare_ok = :"exchange.declare_ok"
    queue_declare_ok = :"queue.declare_ok"
    bind_ok = :"queue.bind_ok"

    {^exchange_declare_ok} =
      :amqp_channel.call(
        chan,
        r_exchange_declare(
          exchange: Topology.dead_letter_exchange(),
          type: "direct",
          durable: true
        )
      )

    {^queue_declare_ok, _, _, _} =
      :amqp_channel.call(
        chan,
        r_queue_declare(queue: Topology.dead_letter_queue(), durable: true)
      )

    {^bind_ok} =
      :amqp_channel.call(
        chan,
        r_queue_bind(
          queue: Topology.dead_letter_queue(),
          exchange: Topology.dead_letter_exchange(),
          routing_key: queue
        )
      )

    {^queue_declare_ok, _, _, _} =
      :amqp_channel.call(
        chan,
        r_queue_declare(
          queue: queue,
          durable: true,
          arguments: Topology.request_queue_arguments()
        )
      )

    :ok
  end

  # Consume from the pseudo-queue amq.rabbitmq.reply-to, publish a probe to a private
  # queue with reply_to set to it, and read the name the broker put in its place. Runs
  # in a process of its own, the consumer of the probe channel, closed at the end.
  @impl true
  def direct_reply_node(conn) do
    fn ->
      {:ok, chan} = :amqp_connection.open_channel(conn)

      try do
        {_, probe, _, _} =
          :amqp_channel.call(chan, r_queue_declare(exclusive: true, auto_delete: true))

        direct = "amq.rabbitmq.reply-to"

        r_basic_consume_ok() =
          :amqp_channel.subscribe(chan, r_basic_consume(queue: direct, no_ack: true), self())

        msg = r_amqp_msg(props: r_p_basic(reply_to: direct), payload: "probe")
        :ok = :amqp_channel.call(chan, r_basic_publish(routing_key: probe), msg)
        ServeEx.ReplyTo.node_of(fetch_reply_to(chan, probe, 50))
      after
        close_channel(chan)
      end
    end
    |> Task.async()
    |> Task.await(5_000)
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  defp fetch_reply_to(_chan, _queue, 0), do: nil

  defp fetch_reply_to(chan, queue, tries) do
    case :amqp_channel.call(chan, r_basic_get(queue: queue, no_ack: true)) do
      {r_basic_get_ok(), r_amqp_msg(props: props)} ->
        r_p_basic(props, :reply_to)

      _empty ->
        Process.sleep(10)
        fetch_reply_to(chan, queue, tries - 1)
    end
  end

  @impl true
  def consume(chan, queue, prefetch) do
    qos_ok = :"basic.qos_ok"
    {^qos_ok} = :amqp_channel.call(chan, r_basic_qos(prefetch_count: prefetch))

    r_basic_consume_ok(consumer_tag: tag) =
      :amqp_channel.subscribe(chan, r_basic_consume(queue: queue), self())

    {:ok, tag}
  end

  @impl true
  def cancel(chan, tag) do
    _ = catch_exit(fn -> :amqp_channel.call(chan, r_basic_cancel(consumer_tag: tag)) end)
    :ok
  end

  @impl true
  def requeue_all(chan),
    do: cast(chan, r_basic_nack(delivery_tag: 0, multiple: true, requeue: true))

  @impl true
  def ack(chan, tag), do: cast(chan, r_basic_ack(delivery_tag: tag))

  @impl true
  def reject(chan, tag, requeue),
    do: cast(chan, r_basic_reject(delivery_tag: tag, requeue: requeue))

  @impl true
  def confirm_select(chan, handler) do
    select_ok = :"confirm.select_ok"
    {^select_ok} = :amqp_channel.call(chan, r_confirm_select())
    :ok = :amqp_channel.register_return_handler(chan, handler)
    :amqp_channel.register_confirm_handler(chan, handler)
  end

  @impl true
  def publish(chan, routing_key, body, correlation_id, seqno, model_version) do
    {content_type, tensor_headers, payload} = wire_form(body)
    version = if model_version, do: [{"x-model-version", :longstr, model_version}], else: []

    props =
      r_p_basic(
        content_type: content_type,
        # transient: a reply queue is exclusive to its client and dies with it anyway
        delivery_mode: 1,
        correlation_id: correlation_id || :undefined,
        message_id: Integer.to_string(seqno),
        headers: version ++ tensor_headers
      )

    msg = r_amqp_msg(props: props, payload: IO.iodata_to_binary(payload))
    method = r_basic_publish(exchange: "", routing_key: routing_key, mandatory: true)
    :amqp_channel.cast(chan, method, msg)
    :ok
  end

  # A binary reply's body is its tensors' raw bytes; the headers say how to read them.
  defp wire_form({:f32, {rows, cols}, fields, data}) do
    headers = [
      {"x-dtype", :longstr, "f32"},
      {"x-shape", :array, [{:long, rows}, {:long, cols}]},
      {"x-fields", :array, Enum.map(fields, &{:longstr, &1})}
    ]

    {"application/octet-stream", headers, data}
  end

  defp wire_form(json), do: {"application/json", [], json}

  @impl true
  def classify(
        {r_basic_deliver(delivery_tag: tag, redelivered: redelivered),
         r_amqp_msg(props: props, payload: payload)}
      ) do
    reply_to = r_p_basic(props, :reply_to)
    correlation_id = r_p_basic(props, :correlation_id)
    headers = r_p_basic(props, :headers)

    {:deliver, payload,
     %{
       delivery_tag: tag,
       redelivered: redelivered,
       reply_to: undefined_to_nil(reply_to),
       correlation_id: undefined_to_nil(correlation_id),
       user_id: undefined_to_nil(r_p_basic(props, :user_id)),
       deadline: header(headers, "x-deadline-ms")
     }}
  end

  def classify(r_basic_ack(delivery_tag: seqno, multiple: multiple)),
    do: {:confirm, seqno, multiple, :ack}

  def classify({:"basic.nack", seqno, multiple, _requeue}), do: {:confirm, seqno, multiple, :nack}

  def classify({r_basic_return(), r_amqp_msg(props: props)}) do
    case Integer.parse(to_string(r_p_basic(props, :message_id))) do
      {seqno, ""} -> {:returned, seqno}
      _ -> {:returned, nil}
    end
  end

  def classify(r_basic_consume_ok()), do: :consume_ok
  def classify(r_basic_cancel_ok()), do: :cancel_ok
  def classify(r_basic_cancel()), do: :cancelled
  def classify(_), do: :other

  # An AMQP table is a list of {name, type, value}; absent is nil.
  defp header(headers, name) when is_list(headers) do
    case List.keyfind(headers, name, 0) do
      {^name, _type, value} -> value
      nil -> nil
    end
  end

  defp header(_undefined, _name), do: nil

  defp undefined_to_nil(:undefined), do: nil
  defp undefined_to_nil(value), do: value

  defp cast(chan, method) do
    _ = catch_exit(fn -> :amqp_channel.cast(chan, method) end)
    :ok
  end

  defp catch_exit(fun) do
    fun.()
  catch
    :exit, _ -> :closed
  end
end
