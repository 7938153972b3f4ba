defmodule ServeEx.ModelRegistry do
  @moduledoc """
  Loads every `*.safetensors` in the model directory and serves them by id (the file
  name without extension). Clients name models by id, never by path.

  Only regular files are read (a FIFO or a device named `*.safetensors` would block
  or mislead the loader), and only names that are valid ids (`ServeEx.Request.valid_id?/1`).
  Each model runs one tiny forward pass before it is served, so a model that loads
  but cannot compute is never served. A file the engine refuses is logged with the
  reason and left out; the rest are served.

  **Hot swap.** Every `MODEL_POLL_MS` (and on SIGHUP, or `reload/0`) the directory is
  looked at again. A file whose size or modification time changed is loaded, checked
  and warmed as a new version, then switched in with one `:persistent_term` write: a
  batch that already started finishes on the old version, the next one runs on the new
  one. A corrupt or mismatched new file leaves the old version serving, and the log says
  why. A new id is announced to the subscribers (`subscribe/0`), and the pipeline gives
  it workers of its own; a file that disappears leaves its model serving until the next
  start. Each model's `version` is the first 12 hex digits of
  the file's SHA-256; every reply carries it (`ServeEx.Pipeline.ReplyPublisher`).

  Models are kept in `:persistent_term`: lookups cost no message, and a model is one
  shared NIF resource.
  """
  use GenServer
  require Logger

  alias ServeEx.{Engine, Request}

  @key {__MODULE__, :models}

  @spec start_link({Path.t(), non_neg_integer()}) :: GenServer.on_start()
  def start_link({dir, poll_ms}),
    do: GenServer.start_link(__MODULE__, {dir, poll_ms}, name: __MODULE__)

  @doc "The model registered under `id`."
  @spec lookup(String.t()) :: {:ok, Engine.t()} | :error
  def lookup(id), do: Map.fetch(:persistent_term.get(@key, %{}), id)

  @doc """
  The version of `model` the registry serves now (a hot swap may have replaced it), or
  `model` itself if its id is no longer served.
  """
  @spec current(Engine.t()) :: Engine.t()
  def current(model) do
    case lookup(model.id) do
      {:ok, now} -> now
      :error -> model
    end
  end

  @doc "Every served model, by id."
  @spec models() :: %{String.t() => Engine.t()}
  def models, do: :persistent_term.get(@key, %{})

  @doc "Looks at the model directory again now; returns the ids that changed."
  @spec reload() :: [String.t()]
  def reload, do: GenServer.call(__MODULE__, :reload, 60_000)

  @doc """
  Announces to the calling process each model id that appears from now on, as
  `{:model_added, model}`, until it exits.
  """
  @spec subscribe() :: :ok
  def subscribe, do: GenServer.call(__MODULE__, :subscribe, :infinity)

  @doc "The models of `dir`, loaded and warmed, without serving them (tests use it)."
  @spec read_dir(Path.t()) :: %{String.t() => Engine.t()}
  def read_dir(dir), do: dir |> scan(%{}, %{}) |> elem(0)

  # scans `dir` and serves what it holds
  defp install(dir) do
    {models, stamps} = scan(dir, %{}, %{})
    if models == %{}, do: Logger.error("no servable *.safetensors in #{Path.expand(dir)}")
    :persistent_term.put(@key, models)
    {models, stamps}
  end

  @impl true
  def init({dir, poll_ms}) do
    {_models, stamps} = install(dir)
    ServeEx.SignalHandler.install()
    schedule(poll_ms)
    {:ok, %{dir: dir, poll_ms: poll_ms, stamps: stamps, subscribers: %{}}}
  end

  @impl true
  def handle_call(:reload, _from, state) do
    {changed, state} = rescan(state)
    {:reply, changed, state}
  end

  def handle_call(:subscribe, {pid, _tag}, state) do
    subscribers = Map.put_new_lazy(state.subscribers, pid, fn -> Process.monitor(pid) end)
    {:reply, :ok, %{state | subscribers: subscribers}}
  end

  @impl true
  def handle_info(:poll, state) do
    {_changed, state} = rescan(state)
    schedule(state.poll_ms)
    {:noreply, state}
  end

  def handle_info({:DOWN, _ref, :process, pid, _reason}, state),
    do: {:noreply, %{state | subscribers: Map.delete(state.subscribers, pid)}}

  defp schedule(0), do: :ok
  defp schedule(ms), do: Process.send_after(self(), :poll, ms)

  defp rescan(state) do
    old = models()
    {models, stamps} = scan(state.dir, old, state.stamps)
    changed = for {id, m} <- models, Map.get(old, id) != m, do: id

    if changed != [] do
      :persistent_term.put(@key, models)

      for id <- changed,
          not Map.has_key?(old, id),
          pid <- Map.keys(state.subscribers),
          do: send(pid, {:model_added, models[id]})
    end

    {changed, %{state | stamps: stamps}}
  end

  # Loads what is new or changed since `stamps` ({size, mtime} per path); keeps `served`
  # models whose files are unchanged, gone, or whose new version fails to load.
  defp scan(dir, served, stamps) do
    paths = dir |> Path.join("*.safetensors") |> Path.wildcard() |> Enum.sort()

    Enum.reduce(paths, {served, %{}}, fn path, {models, seen} ->
      id = Path.basename(path, ".safetensors")
      stamp = stamp(path)
      seen = Map.put(seen, path, stamp)

      if Map.get(stamps, path) == stamp do
        {models, seen}
      else
        case load(path, id) do
          {:ok, model} ->
            verb = if Map.has_key?(served, id), do: "swapped in", else: "serving"

            Logger.info(
              "#{verb} #{model.arch} model '#{id}' version #{model.version} from #{path}"
            )

            {Map.put(models, id, model), seen}

          {:error, {_kind, message}} ->
            kept = if Map.has_key?(served, id), do: "; the old version keeps serving", else: ""
            Logger.error("not serving #{path}: #{message}#{kept}")
            {models, seen}
        end
      end
    end)
  end

  defp stamp(path) do
    case File.lstat(path, time: :posix) do
      {:ok, %File.Stat{size: size, mtime: mtime, type: type}} -> {type, size, mtime}
      {:error, reason} -> {:error, reason}
    end
  end

  defp load(path, id) do
    with :ok <- servable_file(path, id),
         {:ok, version} <- version(path),
         {:ok, model} <- Engine.load(path, id),
         model = %{model | version: version},
         :ok <- warm_up(model) do
      {:ok, model}
    end
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

  defp version(path) do
    case File.read(path) do
      {:ok, bytes} ->
        {:ok, :crypto.hash(:sha256, bytes) |> Base.encode16(case: :lower) |> binary_part(0, 12)}

      {:error, reason} ->
        {:error, {:bad_model, "cannot read: #{:file.format_error(reason)}"}}
    end
  end

  # One row through the model: the engine's code paths and pages are touched before the
  # first client's request, and a model that cannot compute is not served.
  defp warm_up(%Engine{arch: :gpt} = model) do
    first = model.config["vocab"] |> String.first()

    case Engine.generate_text_batch(model, [Engine.text_request(first, 1)]) do
      [{:ok, _}] -> :ok
      [error] -> error
    end
  end

  defp warm_up(model) do
    case Engine.generate_batch(model, [{1, 0, :base64}]) do
      [{:ok, _}] -> :ok
      [error] -> error
    end
  end
end
