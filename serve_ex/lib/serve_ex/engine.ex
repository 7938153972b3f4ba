defmodule ServeEx.Engine do
  @moduledoc """
  The Rust inference engine (`infer_core`) as seen from Elixir.

  Models are NIF resources, loaded once and shared by every process. Output tensors
  are `{rows, cols, bytes}`: the little-endian f32 values, base64-encoded or raw as each
  request's encoding (`:base64` or `:f32`) asks. Batch functions
  take many requests and return one result per request, in order; a request's error
  never affects the others. Errors are `{:error, {kind, message}}` where `kind` is a
  wire error code (`:invalid_argument`, `:too_large`, `:unknown_op`, `:internal`) or
  `:bad_model` for a file the engine refuses.

  A small image batch runs inline, on the calling process's own scheduler; a larger
  one on a dirty CPU scheduler (`runs_inline?/2`). Moving a process to a dirty
  scheduler and back costs two thread wake-ups, which at one request in flight are
  worth more than the engine call itself.
  """

  alias ServeEx.Native

  defstruct [:id, :ref, :arch, :config, :macs_per_row, :version]

  @type t :: %__MODULE__{
          id: String.t(),
          ref: reference(),
          arch: :vae | :wgan | :gpt,
          config: map(),
          macs_per_row: pos_integer() | nil,
          version: String.t() | nil
        }

  # Multiply-adds a batch may take and still run inline: about 130 µs on one AVX2 core
  # at 15 G multiply-adds/s, a few times that on a cold cache, well within the 1 ms a
  # NIF may hold a scheduler.
  @inline_macs 2_000_000
  @type reason :: {atom(), String.t()}
  @type tensor :: {rows :: pos_integer(), cols :: pos_integer(), f32_le :: binary()}
  @type encoding :: :base64 | :f32

  @doc """
  Sets the engine's threads per call (`ENGINE_THREADS`). It takes effect before the
  engine's first call in this VM, and after it only the count already in use is
  accepted. (`System.put_env("RAYON_NUM_THREADS", ...)` would not do: the VM keeps its
  own copy of the environment, which the engine never reads.)

      iex> ServeEx.Engine.set_threads(0)
      {:error, {:invalid_argument, "invalid argument: the engine needs at least one thread"}}
  """
  @spec set_threads(pos_integer()) :: :ok | {:error, reason()}
  def set_threads(n) do
    with {:ok, {}} <- Native.set_threads(n), do: :ok
  end

  @doc """
  What the engine runs on: the CPU, the instruction-set path, the threads per call; an
  error if `INFER_RS_ISA` names a path this CPU cannot run.
  """
  @spec info() :: {:ok, %{String.t() => String.t() | pos_integer()}} | {:error, reason()}
  def info do
    with {:ok, {cpu, isa, threads}} <- Native.engine_info(),
         do: {:ok, %{"cpu" => cpu, "isa" => isa, "threads" => threads}}
  end

  @doc """
  Loads and checks a `.safetensors` exported by `train/`.

      iex> {:error, {:bad_model, message}} = ServeEx.Engine.load("/nonexistent.safetensors", "x")
      iex> message =~ "cannot read /nonexistent.safetensors"
      true
  """
  @spec load(Path.t(), String.t()) :: {:ok, t()} | {:error, reason()}
  def load(path, id) do
    with {:ok, {ref, arch, config_json, macs}} <- Native.model_load(to_string(path)) do
      config = :jsx.decode(config_json, [:return_maps])
      {:ok, %__MODULE__{id: id, ref: ref, arch: arch, config: config, macs_per_row: macs}}
    end
  end

  @doc """
  Whether a batch of `rows` image rows runs inline rather than on a dirty scheduler:
  when its multiply-adds (`rows * macs_per_row`, as the engine counts them) are at most
  #{@inline_macs}. Text generation always runs on a dirty scheduler.
  """
  @spec runs_inline?(t(), non_neg_integer()) :: boolean()
  def runs_inline?(%__MODULE__{macs_per_row: nil}, _rows), do: false
  def runs_inline?(%__MODULE__{macs_per_row: macs}, rows), do: rows * macs <= @inline_macs

  # rows of `{f32_le, width, encoding}` inputs (a malformed one counts as none: the
  # engine refuses it)
  defp input_rows(inputs),
    do: Enum.sum(for {bytes, width, _} <- inputs, width > 0, do: div(byte_size(bytes), 4 * width))

  @doc "One `{:ok, tensor}` or `{:error, reason}` per `{n, seed, encoding}`, decoded in one pass."
  @spec generate_batch(t(), [{pos_integer(), non_neg_integer(), encoding()}]) :: [
          {:ok, tensor()} | {:error, reason()}
        ]
  def generate_batch(%__MODULE__{ref: ref} = model, requests) do
    if runs_inline?(model, Enum.sum(for {n, _, _} <- requests, do: n)),
      do: Native.model_generate_batch_inline(ref, requests),
      else: Native.model_generate_batch(ref, requests)
  end

  @doc "One result per `{f32_le_rows, width, encoding}`, decoded in one pass."
  @spec decode_batch(t(), [{binary(), pos_integer(), encoding()}]) ::
          [{:ok, tensor()} | {:error, reason()}]
  def decode_batch(%__MODULE__{ref: ref} = model, inputs) do
    if runs_inline?(model, input_rows(inputs)),
      do: Native.model_decode_batch_inline(ref, inputs),
      else: Native.model_decode_batch(ref, inputs)
  end

  @doc "One `{:ok, {mu, logvar}}` result per `{f32_le_rows, width, encoding}`."
  @spec encode_batch(t(), [{binary(), pos_integer(), encoding()}]) ::
          [{:ok, {tensor(), tensor()}} | {:error, reason()}]
  def encode_batch(%__MODULE__{ref: ref} = model, inputs) do
    if runs_inline?(model, input_rows(inputs)),
      do: Native.model_encode_batch_inline(ref, inputs),
      else: Native.model_encode_batch(ref, inputs)
  end

  @typedoc """
  A text request: `top_k` nil samples from the whole vocabulary; `deadline_ms` is Unix
  ms or nil; `stream`, if `{pid, tag}`, makes the engine send the new text to pid as
  `{:stream_chunk, tag, text}` messages while it generates (every 8 tokens, and the
  rest just before it returns); `waiter`, if a pid, is the process that waits for the
  result (an HTTP handler): once it is gone, the generation stops between tokens.
  """
  @type text_request :: %{
          prompt: String.t(),
          max_new_tokens: pos_integer(),
          temperature: float(),
          top_k: pos_integer() | nil,
          seed: non_neg_integer(),
          deadline_ms: non_neg_integer() | nil,
          stream: {pid(), term()} | nil,
          waiter: pid() | nil
        }

  @doc """
  A text request with these defaults: greedy, whole vocabulary, seed 0, no deadline,
  no streaming, no waiter but the caller.
  """
  @spec text_request(String.t(), pos_integer(), keyword()) :: text_request()
  def text_request(prompt, max_new_tokens, opts \\ []) do
    defaults = [
      temperature: 0.0,
      top_k: nil,
      seed: 0,
      deadline_ms: nil,
      stream: nil,
      waiter: nil
    ]

    Map.merge(
      %{prompt: prompt, max_new_tokens: max_new_tokens},
      Map.new(Keyword.validate!(opts, defaults))
    )
  end

  @doc """
  One text per request. Each generation stops between tokens when its deadline passes
  (`{:error, {:deadline_exceeded, _}}`) or when the calling process, or its waiter,
  is gone (nobody would read the result).
  """
  @spec generate_text_batch(t(), [text_request()]) :: [{:ok, String.t()} | {:error, reason()}]
  def generate_text_batch(%__MODULE__{ref: ref}, requests),
    do: Native.model_generate_text_batch(ref, requests)

  @typedoc "A decoding batch of one GPT (`decoding_batch/2`)."
  @opaque batch :: reference()
  @typedoc "A sequence's id in its batch."
  @type sequence :: non_neg_integer()

  @doc """
  An empty decoding batch of a GPT: sequences join it, each `step/1` gives every live
  sequence its next token, and a sequence leaves when its text ends or on `leave/2`.
  Each sequence's text is the one `generate_text_batch/2` gives it alone, bit for bit,
  whatever joins or leaves beside it. Options (nil or left out: the engine's default):
  `max_sequences` live at once, `max_cached_tokens` (each sequence reserves the model's
  block size), `prefill_chunk` (prompt tokens a joiner prefills per step). Made to be
  held by one long-lived process.
  """
  @spec decoding_batch(t(), keyword()) :: {:ok, batch()} | {:error, reason()}
  def decoding_batch(%__MODULE__{ref: ref}, opts \\ []) do
    opts = Keyword.validate!(opts, max_sequences: nil, max_cached_tokens: nil, prefill_chunk: nil)
    Native.batch_new(ref, Map.new(opts))
  end

  @doc """
  Adds a text request (`text_request/3`; its deadline and stream are the caller's to
  watch) to the batch: `{:ok, id}`, or the reason it is refused, as
  `generate_text_batch/2` refuses it, or `{:too_large, _}` when the batch is full.
  """
  @spec join(batch(), text_request()) :: {:ok, sequence()} | {:error, reason()}
  def join(batch, %{prompt: prompt, max_new_tokens: n} = request),
    do: Native.batch_join(batch, prompt, n, request.temperature, request.top_k, request.seed)

  @doc """
  One decoding step on a dirty CPU scheduler: `{:ok, [{id, new_text, finished}]}` for
  every sequence that gained a token (a joiner still prefilling a long prompt gains
  none). A finished sequence has left the batch.
  """
  @spec step(batch()) :: {:ok, [{sequence(), String.t(), boolean()}]} | {:error, reason()}
  def step(batch), do: Native.batch_step(batch)

  @doc "Cancels a live sequence at once: `{:ok, its text so far}`, prompt included."
  @spec leave(batch(), sequence()) :: {:ok, String.t()} | {:error, reason()}
  def leave(batch, id), do: Native.batch_leave(batch, id)

  @doc "Live sequences in the batch."
  @spec batch_size(batch()) :: non_neg_integer()
  def batch_size(batch), do: Native.batch_len(batch)
end
