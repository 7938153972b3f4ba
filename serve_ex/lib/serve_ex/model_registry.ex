defmodule ServeEx.ModelRegistry do
  @moduledoc """
  Loads every `*.safetensors` in the model directory at start and serves them by id
  (the file name without extension). Clients name models by id, never by path.

  Only regular files are read (a FIFO or a device named `*.safetensors` would block
  or mislead the loader), and only names that are valid ids (`ServeEx.Request.valid_id?/1`).
  Each model runs one tiny forward pass before it is served, so a model that loads
  but cannot compute is never announced as ready.

  Models are kept in `:persistent_term`: lookups cost no message, and a model is one
  shared NIF resource. A file the engine refuses is logged with the reason and left
  out; the rest are served.
  """
  use GenServer
  require Logger

  alias ServeEx.{Engine, Request}

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

        with :ok <- servable_file(path, id),
             {:ok, model} <- Engine.load(path, id),
             :ok <- warm_up(model) do
          Logger.info("serving #{model.arch} model '#{id}' from #{path}")
          [{id, model}]
        else
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

  defp servable_file(path, id) do
    cond do
      not Request.valid_id?(id) ->
        {:error, {:bad_model, "#{inspect(id)} is not a valid model id (a-z, 0-9, _.-)"}}

      match?({:ok, %File.Stat{type: :regular}}, File.lstat(path)) ->
        :ok

      true ->
        {:error, {:bad_model, "not a regular file"}}
    end
  end

  # One row through the model: the engine's code paths and pages are touched before the
  # first client's request, and a model that cannot compute is not served.
  defp warm_up(%Engine{arch: :gpt} = model) do
    first = model.config["vocab"] |> String.first()

    case Engine.generate_text_batch(model, [{first, 1, 0.0, 0, 0}]) do
      [{:ok, _}] -> :ok
      [error] -> error
    end
  end

  defp warm_up(model) do
    case Engine.generate_batch(model, [{1, 0}]) do
      [{:ok, _}] -> :ok
      [error] -> error
    end
  end

  @impl true
  def init(dir) do
    load_dir(dir)
    {:ok, dir}
  end
end
