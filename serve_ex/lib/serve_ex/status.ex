defmodule ServeEx.Status do
  @moduledoc """
  What `/readyz` reports: whether the consumer is active, whether the node is
  draining, and what the engine runs on (`ServeEx.Engine.info/0`: CPU, instruction-set
  path, threads per call). They change rarely (a (re)subscription, a drain) or never,
  so they live in `:persistent_term`, where reading them costs nothing.

  The node is ready when the broker is connected, the consumer is active, at least
  one model is loaded and warmed (`ServeEx.ModelRegistry`), and it is not draining.
  """

  @consuming {__MODULE__, :consuming}
  @draining {__MODULE__, :draining}
  @engine {__MODULE__, :engine}

  @spec consuming?() :: boolean()
  def consuming?, do: :persistent_term.get(@consuming, false)

  @spec set_consuming(boolean()) :: :ok
  def set_consuming(value), do: put(@consuming, value)

  @spec draining?() :: boolean()
  def draining?, do: :persistent_term.get(@draining, false)

  @spec set_draining(boolean()) :: :ok
  def set_draining(value), do: put(@draining, value)

  @spec engine() :: map() | nil
  def engine, do: :persistent_term.get(@engine, nil)

  @spec set_engine(map()) :: :ok
  def set_engine(info), do: put(@engine, info)

  @doc "The readiness report: `{ready?, details}`."
  @spec readiness() :: {boolean(), map()}
  def readiness do
    connected = ServeEx.Connection.connected?()
    models = ServeEx.ModelRegistry.models() |> Map.keys() |> Enum.sort()

    details = %{
      "broker_connected" => connected,
      "consuming" => consuming?(),
      "draining" => draining?(),
      "engine" => engine(),
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
