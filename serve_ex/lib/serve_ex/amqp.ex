defmodule ServeEx.AMQP do
  @moduledoc """
  The AMQP operations the service needs, as a behaviour: `ServeEx.AMQP.Client` speaks
  to RabbitMQ through the Erlang `amqp_client`; unit tests use a fake. The
  implementation is `ServeEx.Config`'s `amqp`, which each process that talks to the
  broker keeps in its state.

  Deliveries reach the consuming process as messages; `classify/1` tells the
  consumer what a message means, so no other module depends on the client's records.
  """

  @type conn :: term()
  @type chan :: term()
  @type meta :: %{
          delivery_tag: non_neg_integer(),
          redelivered: boolean(),
          reply_to: String.t() | nil,
          correlation_id: String.t() | nil,
          deadline: term()
        }

  @doc "Opens a connection; `name` is what the broker shows for it (`connection_name`)."
  @callback connect(url :: String.t(), name :: String.t()) :: {:ok, conn()} | {:error, term()}
  @callback close_connection(conn()) :: :ok
  @callback open_channel(conn()) :: {:ok, chan()} | {:error, term()}
  @callback close_channel(chan()) :: :ok
  @callback declare_topology(chan(), queue :: String.t()) :: :ok
  @doc """
  The node part (`reply@<digits>`) of the direct reply-to names this broker hands out,
  learnt by asking it for one: a direct reply-to name on any other node makes the
  broker close the publishing connection.
  """
  @callback direct_reply_node(conn()) :: {:ok, String.t()} | {:error, term()}
  @doc "Subscribes the calling process; returns the consumer tag."
  @callback consume(chan(), queue :: String.t(), prefetch :: pos_integer()) ::
              {:ok, consumer_tag :: String.t()}
  @doc "Cancels a consumer (`basic.cancel`): the broker sends it nothing more."
  @callback cancel(chan(), consumer_tag :: String.t()) :: :ok
  @doc "Nacks every unacked delivery of the channel with requeue (`basic.nack`, multiple)."
  @callback requeue_all(chan()) :: :ok
  @callback ack(chan(), delivery_tag :: non_neg_integer()) :: :ok
  @callback reject(chan(), delivery_tag :: non_neg_integer(), requeue :: boolean()) :: :ok
  @doc """
  Puts the channel in publisher-confirm mode; confirms, and the returns of mandatory
  publishes that no queue took, go to `handler` (see `classify/1`).
  """
  @callback confirm_select(chan(), handler :: pid()) :: :ok
  @doc """
  Publishes a reply with `mandatory` set through the default exchange; `seqno` travels
  as its message id, so a return can be matched to the publish, and the version of the
  model that computed it (if any) as the header `x-model-version`. A JSON body goes as
  `application/json`; a binary reply (`ServeEx.Reply.body/0`) as
  `application/octet-stream` with headers `x-dtype`, `x-shape` and `x-fields`.
  """
  @callback publish(
              chan(),
              routing_key :: String.t(),
              body :: ServeEx.Reply.body(),
              correlation_id :: String.t() | nil,
              seqno :: pos_integer(),
              model_version :: String.t() | nil
            ) ::
              :ok
  @callback classify(message :: term()) ::
              {:deliver, payload :: binary(), meta()}
              | {:confirm, seqno :: pos_integer(), multiple :: boolean(), :ack | :nack}
              | {:returned, seqno :: pos_integer() | nil}
              | :consume_ok
              | :cancel_ok
              | :cancelled
              | :other
end
