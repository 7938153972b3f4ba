defmodule ServeEx.HTTP.Acknowledger do
  @moduledoc """
  The `ServeEx.Acknowledger` of an HTTP request, `{ServeEx.HTTP.Acknowledger, pid, ref}`:
  its reply goes to the waiting handler `pid` as `{ref, body, label}`, its stream's
  chunks as `{:stream_chunk, ref, text}`; there is no delivery to settle, so a failure
  is an error reply at once (`ServeEx.Pipeline.FailurePolicy.decide_http/1`).
  """
  @behaviour ServeEx.Acknowledger

  alias ServeEx.Metrics
  alias ServeEx.Pipeline.FailurePolicy

  @doc "The acknowledger of a request that the calling handler waits for under `ref`."
  @spec new(reference()) :: ServeEx.Acknowledger.t()
  def new(ref), do: {__MODULE__, self(), ref}

  @impl true
  def settle(outcomes) do
    for {%{acknowledger: {__MODULE__, pid, ref}} = message, outcome} <- outcomes do
      {body, label} = FailurePolicy.decide_http(outcome)
      send(pid, {ref, body, label})
      Metrics.request(message.model_id, label, message.received_at)
    end

    :ok
  end

  @impl true
  def stream_target(%{acknowledger: {__MODULE__, pid, ref}}), do: {pid, ref}

  @impl true
  def caller(%{acknowledger: {__MODULE__, pid, _ref}}), do: pid
end
