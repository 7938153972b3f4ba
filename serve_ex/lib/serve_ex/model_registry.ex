defmodule ServeEx.ModelRegistry do
  @moduledoc """
  Loads every `*.safetensors` in the model directory at start and serves them by id
  (the file name without extension). Clients name models by id, never by path.

  Models are kept in `:persistent_term`: lookups cost no message, and a model is one
  shared NIF resource. A file the engine refuses is logged with the reason and left
  out; the rest are served.
  """
  use GenServer
  require Logger

  alias ServeEx.Engine

  @key {__MODULE__, :models}

  @spec start_link(Path.t()) :: GenServer.on_start()
  def start_link(dir), do: GenServer.start_link(__MODULE__, dir, name: __MODULE__)

  @doc "The model registered under `id`."
  @spec lookup(String.t()) :: {:ok, Engine.t()} | :error
  def lookup(id), do: Map.fetch(:persistent_term.get(@key, %{}), id)

  @doc "Every served model, by id."
  @spec models() :: %{String.t() => Engine.t()}
  def models, do: :persistent_term.get(@key, %{})

  @doc "Loads the models of `dir` (used at start, and by tests)."
  @spec load_dir(Path.t()) :: %{String.t() => Engine.t()}
  def load_dir(dir) do
    models =
      dir
      |> Path.join("*.safetensors")
      |> Path.wildcard()
      |> Enum.sort()
      |> Enum.flat_map(fn path ->
        id = Path.basename(path, ".safetensors")

        case Engine.load(path, id) do
          {:ok, model} ->
            Logger.info("serving #{model.arch} model '#{id}' from #{path}")
            [{id, model}]

          {:error, {_kind, message}} ->
            Logger.error("not serving #{path}: #{message}")
            []
        end
      end)
      |> Map.new()

    if models == %{}, do: Logger.error("no servable *.safetensors in #{Path.expand(dir)}")
    :persistent_term.put(@key, models)
    models
  end

  @impl true
  def init(dir) do
    load_dir(dir)
    {:ok, dir}
  end
end
