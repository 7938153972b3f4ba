defmodule ServeEx.Config do
  @moduledoc """
  The service's settings, read once from environment variables and validated; a bad
  value stops the start with an `ArgumentError` that names the variable.

  | variable | default | meaning |
  |---|---|---|
  | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672` | the broker |
  | `MODEL_DIR` | `artifacts` | every `*.safetensors` in it is served, id = file name without extension |
  | `REQUEST_QUEUE` | `serve_ex.requests` | the queue consumed |
  | `PROCESSORS` | `2` | processor processes (decode and validate) |
  | `BATCH_SIZE` | `64` | image rows that make a batcher flush |
  | `BATCH_TIMEOUT_MS` | `0` | longest wait before a partial batch flushes; 0 flushes as soon as the batcher has taken in every request already waiting for it, so batches grow with load and a lone request never waits |
  | `PREFETCH` | `2 * BATCH_SIZE` | unacked deliveries the broker sends ahead: the backpressure |
  | `ENGINE_THREADS` | `1` | threads per engine call, up to the VM's online schedulers (one per core unless limited), set in the engine before it first runs (`ServeEx.Engine.set_threads/1`; `/readyz` says what it got; `RAYON_NUM_THREADS` has no effect on the node); the VM already runs one call per dirty CPU scheduler, so more threads per call only pay off with fewer concurrent calls than cores |
  | `REPLY_QUEUE_PREFIX` | `serve_ex.reply.` | besides broker-generated and direct reply-to names, `reply_to` may name a queue under this prefix (`ServeEx.ReplyTo`); empty turns it off |
  | `AMQP_REQUIRE_USER_ID` | `false` | `true`: every request must carry the AMQP `user_id` property (the broker checks it against the connection's user) and a `reply_to` under `REPLY_QUEUE_PREFIX<user_id>.`; any other is dead-lettered without a publish, so a client's replies can only go to its own queues |
  | `MODEL_POLL_MS` | `2000` | how often the model directory is looked at for new or changed files (hot swap); 0 turns polling off (SIGHUP still reloads) |
  | `MAX_SEQUENCES` | `32` | texts a GPT generates at once (continuous batching, `ServeEx.Pipeline.TextScheduler`); more wait to join; 1 generates one text at a time |
  | `MAX_QUEUED_ROWS` | `8 * BATCH_SIZE` | image rows, or text requests, one model may have waiting or computing; past it a request gets `overloaded` at once (`ServeEx.Admission`) |
  | `DRAIN_TIMEOUT_MS` | `10000` | on SIGTERM or `ServeEx.stop/0`, how long in-flight work may take to finish before it is requeued |
  | `HTTP_IP` | `127.0.0.1` | address of the HTTP listeners (inference; health and metrics) |
  | `HTTP_PORT` | `9090` | the inference listener's port |
  | `HEALTH_PORT` | `9091` | the health and metrics listener's port (`/livez`, `/readyz`, `/metrics`): its own connections, so a flood on inference cannot make a healthy node fail its probes |
  | `HTTP_MAX_CONNECTIONS` | `1024` | connections the inference listener serves at once (a soft cap: each of ranch's 10 acceptors may start one more); more wait |
  | `HTTP_HOSTS` | `localhost,127.0.0.1,[::1]` | the names the `Host` header of an inference or metrics request may give (any port), comma-separated; others get 421, so that a web page cannot reach the endpoint through DNS rebinding |

  One setting is not an environment variable: `amqp`, the module that speaks AMQP
  (`ServeEx.AMQP.Client`). Every process that talks to the broker takes it from here
  and keeps it in its state; unit tests put a fake in its place.
  """

  @enforce_keys [
    :amqp_url,
    :model_dir,
    :request_queue,
    :processors,
    :batch_size,
    :batch_timeout_ms
  ]
  defstruct @enforce_keys ++
              [
                :prefetch,
                :engine_threads,
                :http_ip,
                :http_port,
                :health_port,
                :http_max_connections,
                :http_hosts,
                :reply_queue_prefix,
                :amqp_require_user_id,
                :drain_timeout_ms,
                :max_queued_rows,
                :max_sequences,
                :model_poll_ms,
                amqp: ServeEx.AMQP.Client
              ]

  @type t :: %__MODULE__{}

  @doc """
  Reads the settings from `env` (a map of variable names to strings).

      iex> ServeEx.Config.from_env(%{"BATCH_SIZE" => "8"}).prefetch
      16
      iex> ServeEx.Config.from_env(%{"PROCESSORS" => "zero"})
      ** (ArgumentError) PROCESSORS must be a whole number from 1 to 64, got "zero"

      iex> ServeEx.Config.from_env(%{"REPLY_QUEUE_PREFIX" => "amq.mine."})
      ** (ArgumentError) REPLY_QUEUE_PREFIX must be up to 100 letters, digits or _.:- and not start with amq., got "amq.mine."
  """
  @spec from_env(%{optional(String.t()) => String.t()}) :: t()
  def from_env(env \\ System.get_env()) do
    batch_size = int(env, "BATCH_SIZE", 64, 1..4096)

    %__MODULE__{
      amqp_url: url(env),
      model_dir: Map.get(env, "MODEL_DIR", "artifacts"),
      request_queue: queue(env),
      processors: int(env, "PROCESSORS", 2, 1..64),
      batch_size: batch_size,
      batch_timeout_ms: int(env, "BATCH_TIMEOUT_MS", 0, 0..10_000),
      prefetch: int(env, "PREFETCH", 2 * batch_size, 1..65_535),
      engine_threads: int(env, "ENGINE_THREADS", 1, 1..System.schedulers_online()),
      http_ip: ip(env),
      http_port: int(env, "HTTP_PORT", 9090, 0..65_535),
      health_port: int(env, "HEALTH_PORT", 9091, 0..65_535),
      http_max_connections: int(env, "HTTP_MAX_CONNECTIONS", 1024, 1..100_000),
      http_hosts: hosts(env),
      reply_queue_prefix: reply_prefix(env),
      amqp_require_user_id: require_user_id(env),
      drain_timeout_ms: int(env, "DRAIN_TIMEOUT_MS", 10_000, 0..600_000),
      max_queued_rows: int(env, "MAX_QUEUED_ROWS", 8 * batch_size, 1..1_000_000),
      max_sequences: int(env, "MAX_SEQUENCES", 32, 1..64),
      model_poll_ms: int(env, "MODEL_POLL_MS", 2_000, 0..3_600_000)
    }
  end

  defp int(env, key, default, first..last) do
    case Map.fetch(env, key) do
      :error ->
        default

      {:ok, text} ->
        case Integer.parse(text) do
          {value, ""} when value >= first and value <= last ->
            value

          _ ->
            raise ArgumentError,
                  "#{key} must be a whole number from #{first} to #{last}, got #{inspect(text)}"
        end
    end
  end

  defp url(env) do
    url = Map.get(env, "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")

    case URI.parse(url) do
      %URI{scheme: "amqp", host: host} when is_binary(host) and host != "" ->
        url

      _ ->
        raise ArgumentError,
              "AMQP_URL must look like amqp://user:pass@host:port, got #{inspect(url)}"
    end
  end

  defp queue(env) do
    checked(
      env,
      "REQUEST_QUEUE",
      "serve_ex.requests",
      &(&1 =~ ~r/^[A-Za-z0-9_.:-]{1,200}$/),
      "1-200 letters, digits or _.:-"
    )
  end

  defp reply_prefix(env) do
    checked(
      env,
      "REPLY_QUEUE_PREFIX",
      "serve_ex.reply.",
      &(&1 =~ ~r/\A[A-Za-z0-9_.:-]{0,100}\z/ and not String.starts_with?(&1, "amq.")),
      "up to 100 letters, digits or _.:- and not start with amq."
    )
  end

  # The value of `key` if `valid?` holds for it; otherwise an ArgumentError that names
  # the variable and its `rule`.
  defp checked(env, key, default, valid?, rule) do
    value = Map.get(env, key, default)

    if valid?.(value),
      do: value,
      else: raise(ArgumentError, "#{key} must be #{rule}, got #{inspect(value)}")
  end

  defp require_user_id(env) do
    case checked(
           env,
           "AMQP_REQUIRE_USER_ID",
           "false",
           &(&1 in ["true", "false"]),
           "true or false"
         ) do
      "false" ->
        false

      "true" ->
        if reply_prefix(env) == "",
          do:
            raise(ArgumentError, "AMQP_REQUIRE_USER_ID=true needs a REPLY_QUEUE_PREFIX, got none")

        true
    end
  end

  defp hosts(env) do
    env
    |> checked(
      "HTTP_HOSTS",
      "localhost,127.0.0.1,[::1]",
      &(&1 =~ ~r/\A[A-Za-z0-9.\-\[\]:]+(,[A-Za-z0-9.\-\[\]:]+)*\z/),
      "comma-separated host names or addresses"
    )
    |> String.downcase()
    |> String.split(",")
  end

  defp ip(env) do
    text = Map.get(env, "HTTP_IP", "127.0.0.1")

    case :inet.parse_address(String.to_charlist(text)) do
      {:ok, address} -> address
      {:error, _} -> raise ArgumentError, "HTTP_IP must be an IP address, got #{inspect(text)}"
    end
  end
end
