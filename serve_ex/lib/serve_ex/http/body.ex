defmodule ServeEx.HTTP.Body do
  @moduledoc """
  The JSON body of an inference request, read the same way by every endpoint: refused
  while the node drains (503), when it is not `application/json` (415), when it is
  declared or turns out to be above the limit (413; a chunked body is read up to it),
  or when it does not all arrive within 10 s (408).
  """
  alias ServeEx.{Request, Status}

  # How long the whole body may take to arrive.
  @body_ms 10_000

  @spec read(:cowboy_req.req()) ::
          {:ok, binary(), :cowboy_req.req()}
          | {:error, 408 | 413 | 415 | 503, atom(), String.t(), :cowboy_req.req()}
  def read(req) do
    limit = Request.max_body_bytes()

    cond do
      Status.draining?() ->
        {:error, 503, :overloaded, "this node is draining; retry on another", req}

      not json?(:cowboy_req.parse_header("content-type", req)) ->
        {:error, 415, :malformed_request, "send the body as application/json", req}

      # a chunked body has no length up front (:undefined); it is read up to the limit
      declared_above?(:cowboy_req.body_length(req), limit) ->
        too_large(req, limit)

      true ->
        case :cowboy_req.read_body(req, %{length: limit + 1, period: @body_ms}) do
          {:ok, body, req} ->
            {:ok, body, req}

          {:more, partial, req} when byte_size(partial) > limit ->
            too_large(req, limit)

          # the whole body did not come within @body_ms
          {:more, _partial, req} ->
            {:error, 408, :malformed_request, "the body did not arrive in time", req}
        end
    end
  end

  defp declared_above?(length, limit), do: is_integer(length) and length > limit

  defp json?({"application", "json", _params}), do: true
  defp json?(_other), do: false

  defp too_large(req, limit),
    do: {:error, 413, :too_large, "the body is above the limit of #{limit} bytes", req}
end
