defmodule ServeEx.Message do
  @moduledoc """
  One delivery on its way through the pipeline. `acknowledger` is what the reply
  publisher needs to settle it: the consumer channel and the delivery tag (acks must
  go to the channel that received the message).
  """

  @enforce_keys [:payload, :reply_to, :correlation_id, :acknowledger, :redelivered, :received_at]
  defstruct @enforce_keys ++ [:request, :deadline, :model_version, model_id: "unknown"]

  @type t :: %__MODULE__{
          payload: binary(),
          reply_to: String.t() | nil,
          correlation_id: String.t() | nil,
          acknowledger: {module(), ServeEx.AMQP.chan(), non_neg_integer()},
          redelivered: boolean(),
          received_at: integer(),
          deadline: term(),
          model_version: String.t() | nil,
          request: ServeEx.Request.t() | nil,
          model_id: String.t()
        }
end
