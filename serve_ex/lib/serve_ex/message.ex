defmodule ServeEx.Message do
  @moduledoc """
  One request on its way through the pipeline. `acknowledger` says where its answer
  goes and how it is settled (`ServeEx.Acknowledger`). An HTTP request's `route` holds
  the model id and op of its path. `user_id` is a delivery's AMQP `user_id` property,
  which the broker has checked against the publishing connection's user.
  """

  @enforce_keys [:payload, :reply_to, :correlation_id, :acknowledger, :redelivered, :received_at]
  defstruct @enforce_keys ++
              [:request, :deadline, :model_version, :route, :user_id, model_id: "unknown"]

  @type t :: %__MODULE__{
          payload: binary(),
          reply_to: String.t() | nil,
          correlation_id: String.t() | nil,
          acknowledger: ServeEx.Acknowledger.t(),
          redelivered: boolean(),
          received_at: integer(),
          deadline: term(),
          model_version: String.t() | nil,
          request: ServeEx.Request.t() | nil,
          route: {model_id :: String.t(), op :: String.t()} | nil,
          user_id: String.t() | nil,
          model_id: String.t()
        }
end
