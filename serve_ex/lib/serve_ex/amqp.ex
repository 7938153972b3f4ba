defmodule ServeEx.AMQP do
  @moduledoc """
  The AMQP operations the service needs, as a behaviour: `ServeEx.AMQP.Client` speaks
  to RabbitMQ through the Erlang `amqp_client`; unit tests use a fake. The
  implementation is chosen by the `:amqp` application env.

  Deliveries reach the consuming process as messages; `classify/1` tells the
  consumer what a message means, so no other module depends on the client's records.
  """

  @type conn :: term()
  @type chan :: term()
  @type meta :: %{
          delivery_tag: non_neg_integer(),
          redelivered: boolean(),
          reply_to: String.t() | nil,
          correlation_id: String.t() | nil
        }

  @callback connect(url :: String.t()) :: {:ok, conn()} | {:error, term()}
  @callback close_connection(conn()) :: :ok
  @callback open_channel(conn()) :: {:ok, chan()} | {:error, term()}
  @callback close_channel(chan()) :: :ok
  @callback declare_topology(chan(), queue :: String.t()) :: :ok
  @callback consume(chan(), queue :: String.t(), prefetch :: pos_integer()) :: :ok
  @callback ack(chan(), delivery_tag :: non_neg_integer()) :: :ok
  @callback reject(chan(), delivery_tag :: non_neg_integer(), requeue :: boolean()) :: :ok
  @doc "Puts the channel in publisher-confirm mode; confirms go to `handler` (see `classify/1`)."
  @callback confirm_select(chan(), handler :: pid()) :: :ok
  @callback publish(
              chan(),
              routing_key :: String.t(),
              payload :: iodata(),
              correlation_id :: String.t() | nil
            ) ::
              :ok
  @callback classify(message :: term()) ::
              {:deliver, payload :: binary(), meta()}
              | {:confirm, seqno :: pos_integer(), multiple :: boolean(), :ack | :nack}
              | :consume_ok
              | :cancelled
              | :other

  @doc "The configured implementation."
  @spec impl() :: module()
  def impl, do: Application.get_env(:serve_ex, :amqp, ServeEx.AMQP.Client)
end
