defmodule ServeEx.Message do
  @moduledoc """
  One request on its way through the pipeline. `acknowledger` says how it is settled:
  for an AMQP delivery, the consumer channel and the delivery tag (acks must go to the
  channel that received the message); for an HTTP request, `{:http, pid, ref}`: the
  reply goes to the waiting HTTP handler as `{ref, body, label}`, and `route` holds the
  model id and op of its path. `user_id` is a delivery's AMQP `user_id` property,
  which the broker has checked against the publishing connection's user.
  """

  @enforce_keys [:payload, :reply_to, :correlation_id, :acknowledger, :redelivered, :received_at]
  defstruct @enforce_keys ++
              [:request, :deadline, :model_version, :route, :user_id, model_id: "unknown"]

  @type t :: %__MODULE__{
          payload: binary(),
          reply_to: String.t() | nil,
          correlation_id: String.t() | nil,
          acknowledger:
            {module(), ServeEx.AMQP.chan(), non_neg_integer()} | {:http, pid(), reference()},
          redelivered: boolean(),
          received_at: integer(),
          deadline: term(),
          model_version: String.t() | nil,
          request: ServeEx.Request.t() | nil,
          route: {model_id :: String.t(), op :: String.t()} | nil,
          user_id: String.t() | nil,
          model_id: String.t()
        }

  @doc "Whether the message is an HTTP request (it has no delivery to settle)."
  @spec http?(t()) :: boolean()
  def http?(%__MODULE__{acknowledger: acknowledger}), do: match?({:http, _, _}, acknowledger)
end
