defmodule ServeEx.Topology do
  @moduledoc """
  Every queue and exchange the service uses, named and configured in one place.

  - The request queue (`REQUEST_QUEUE`, default `serve_ex.requests`) is a durable
    **quorum queue**. Quorum queues count deliveries: a message whose consumer dies
    before acking is redelivered, and one delivered more than `#{5}` times (a message
    that keeps killing whole nodes) is dead-lettered rather than requeued forever.
  - Failed messages the service rejects without requeue, and those over the delivery
    limit, go through the direct exchange `serve_ex.dlx` to the durable queue
    `serve_ex.dead`, routed by the request queue's name.
  - Replies go to each request's `reply_to` through the default exchange.
  """

  @delivery_limit 5

  @spec dead_letter_exchange() :: String.t()
  def dead_letter_exchange, do: "serve_ex.dlx"

  @spec dead_letter_queue() :: String.t()
  def dead_letter_queue, do: "serve_ex.dead"

  @doc "Arguments of the request queue, as AMQP table entries."
  @spec request_queue_arguments() :: [{binary(), atom(), term()}]
  def request_queue_arguments do
    [
      {"x-queue-type", :longstr, "quorum"},
      {"x-delivery-limit", :long, @delivery_limit},
      {"x-dead-letter-exchange", :longstr, dead_letter_exchange()}
    ]
  end
end
