defmodule ServeEx.Pipeline.ModelWatcher do
  @moduledoc """
  Starts the workers of a model id that appears after the pipeline started (a
  hot-swapped directory gained a file): the model registry announces each new id to
  its subscribers (`ServeEx.ModelRegistry.subscribe/0`), and this process, a child of
  `ServeEx.Pipeline.Supervisor`, adds that model's workers to its parent with the
  settings the tree handed down.

  Once started, it subscribes and then starts the workers of every served model: a
  model announced before it subscribed is not missed, and a model whose workers run
  already is left as it is (a child id is started once).
  """
  use GenServer

  alias ServeEx.ModelRegistry
  alias ServeEx.Pipeline.Workers

  @doc "`settings`: the workers' settings (`t:ServeEx.Pipeline.Workers.settings/0`)."
  @spec start_link(map()) :: GenServer.on_start()
  def start_link(settings), do: GenServer.start_link(__MODULE__, settings)

  # The workers start from handle_continue, not init: the parent is still starting its
  # children while init runs, and would not answer start_child.
  @impl true
  def init(settings), do: {:ok, settings, {:continue, :catch_up}}

  @impl true
  def handle_continue(:catch_up, settings) do
    :ok = ModelRegistry.subscribe()
    Enum.each(Map.values(ModelRegistry.models()), &start_workers(&1, settings))
    {:noreply, settings}
  end

  @impl true
  def handle_info({:model_added, model}, settings) do
    start_workers(model, settings)
    {:noreply, settings}
  end

  # (their admission counters are made on a request's first admission)
  defp start_workers(model, settings) do
    for spec <- Workers.child_specs(model, settings) do
      case Supervisor.start_child(ServeEx.Pipeline.Supervisor, spec) do
        {:ok, _pid} -> :ok
        {:error, {:already_started, _pid}} -> :ok
        {:error, :already_present} -> :ok
      end
    end
  end
end
