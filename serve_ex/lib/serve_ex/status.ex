defmodule ServeEx.Status do
  @moduledoc """
  What `/readyz` reports: whether the consumer is active and whether the node is
  draining. Both change rarely (a (re)subscription, a drain), so they live in
  `:persistent_term`, where reading them costs nothing.

  The node is ready when the broker is connected, the consumer is active, at least
  one model is loaded and warmed (`ServeEx.ModelRegistry`), and it is not draining.
  """

  @consuming {__MODULE__, :consuming}
  @draining {__MODULE__, :draining}

  @spec consuming?() :: boolean()
  def consuming?, do: :persistent_term.get(@consuming, false)

  @spec set_consuming(boolean()) :: :ok
  def set_consuming(value), do: put(@consuming, value)

  @spec draining?() :: boolean()
  def draining?, do: :persistent_term.get(@draining, false)

  @spec set_draining(boolean()) :: :ok
  def set_draining(value), do: put(@draining, value)

  @doc "The readiness report: `{ready?, details}`."
  @spec readiness() :: {boolean(), map()}
  def readiness do
    connected = ServeEx.Connection.connected?()
    models = ServeEx.ModelRegistry.models() |> Map.keys() |> Enum.sort()

    details = %{
      "broker_connected" => connected,
      "consuming" => consuming?(),
      "draining" => draining?(),
      "models" => models
    }

    ready = connected and consuming?() and models != [] and not draining?()
    {ready, Map.put(details, "ready", ready)}
  end

  defp put(key, value) do
    if :persistent_term.get(key, nil) != value, do: :persistent_term.put(key, value)
    :ok
  end
end
