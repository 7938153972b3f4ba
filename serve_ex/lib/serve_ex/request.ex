defmodule ServeEx.Request do
  @moduledoc """
  Decodes and validates one request body against the wire format of
  `shared_schema/wire/` (version 1). The limits and the ops of each architecture are
  read from `limits.json` and `errors.json` at compile time.

  The result is a `%ServeEx.Request{}` ready for a batcher, or
  `{:error, code, message}` with a wire error code. Checks that need the model itself
  (z width, vocabulary, top_k against the vocabulary size) happen in the engine and
  come back as the same codes.

  The cost of a body is bounded before it is decoded (its size, its nesting, the length
  of each number), and an error message never repeats the value it refuses.
  """

  @schema_dir Path.expand("../../../shared_schema/wire", __DIR__)
  @external_resource Path.join(@schema_dir, "limits.json")
  @external_resource Path.join(@schema_dir, "errors.json")
  @limits @schema_dir |> Path.join("limits.json") |> File.read!() |> :jsx.decode([:return_maps])
  @errors @schema_dir |> Path.join("errors.json") |> File.read!() |> :jsx.decode([:return_maps])
  @max_body_bytes @limits["max_body_bytes"]
  # The largest finite float32; a tensor value beyond it cannot be sent to the engine.
  @f32_max 3.4028234663852886e38
  # A valid body opens one object and at most one list per row plus one; twice that
  # leaves room for a too-large body to be told so, and more means a body built to be
  # expensive to parse.
  @max_brackets 2 * (max(@limits["max_z_rows"], @limits["max_x_rows"]) + 2)
  @max_number_chars @limits["max_number_chars"]
  @ops_by_arch Map.new(@errors["ops"], fn {arch, ops} -> {String.to_atom(arch), ops} end)
  @all_ops @ops_by_arch |> Map.values() |> List.flatten() |> Enum.uniq()
  @fields %{
    "generate" => ~w(n seed encoding),
    "decode" => ~w(z encoding),
    "encode" => ~w(x encoding),
    "generate_text" => ~w(prompt max_new_tokens temperature top_k seed stream stop)
  }

  @enforce_keys [:model, :op, :args, :rows]
  defstruct @enforce_keys

  @type code ::
          :malformed_request
          | :unsupported_version
          | :unknown_model
          | :unknown_op
          | :invalid_argument
          | :too_large
          | :deadline_exceeded
  @type t :: %__MODULE__{
          model: ServeEx.Engine.t(),
          op: String.t(),
          args: map(),
          rows: pos_integer()
        }

  @doc """
  Parses `body`; `lookup` resolves a model id to a loaded model or `:error`.

      iex> ServeEx.Request.parse(~s({"v": 2, "model": "vae", "op": "generate", "n": 1}), fn _ -> :error end)
      {:error, :unsupported_version, "wire version 2 is not supported; send \\"v\\": 1"}
  """
  @spec parse(binary(), lookup()) :: {:ok, t()} | {:error, code(), String.t()}
  def parse(body, lookup), do: parse(body, lookup, &{:ok, &1})

  @doc """
  Parses the body of an HTTP request to `/v1/models/{id}/{op}`: the same JSON as a
  queued request without `model` and `op`, which the path gives (`v` may be left out).

      iex> ServeEx.Request.parse_http(~s({"n": 1, "model": "wgan"}), "vae", "generate", fn _ -> :error end)
      {:error, :malformed_request, "the model and the op are in the URL path; leave \\"model\\" and \\"op\\" out of the body"}
  """
  @spec parse_http(binary(), String.t(), String.t(), lookup()) ::
          {:ok, t()} | {:error, code(), String.t()}
  def parse_http(body, id, op, lookup), do: parse(body, lookup, &addressed(&1, id, op))

  @type lookup :: (String.t() -> {:ok, ServeEx.Engine.t()} | :error)

  defp parse(body, lookup, address) do
    with {:ok, map} <- decode(body),
         {:ok, map} <- address.(map),
         :ok <- check_version(map),
         {:ok, id, op} <- model_and_op(map),
         :ok <- check_fields(map, op),
         {:ok, args, rows} <- arguments(op, map),
         {:ok, model} <- find_model(lookup, id),
         :ok <- check_op_of_arch(model, op) do
      {:ok, %__MODULE__{model: model, op: op, args: args, rows: rows}}
    end
  end

  @doc """
  Decodes a body that must be a JSON object, its cost bounded first (its size, its
  nesting, the length of each number): the top-level map, or the error.
  """
  @spec decode(binary()) :: {:ok, map()} | {:error, code(), String.t()}
  def decode(body) do
    with :ok <- check_size(body),
         :ok <- check_brackets(body),
         :ok <- check_numbers(body),
         do: decode_json(body)
  end

  @doc "The most new tokens a text request may ask for (`limits.json`)."
  @spec max_new_tokens() :: pos_integer()
  def max_new_tokens, do: @limits["max_new_tokens"]

  @doc "The largest request body accepted, in bytes (`limits.json`)."
  @spec max_body_bytes() :: pos_integer()
  def max_body_bytes, do: @max_body_bytes

  defp check_size(body) when byte_size(body) > @max_body_bytes,
    do:
      {:error, :too_large,
       "the body is #{byte_size(body)} bytes, above the limit of #{@max_body_bytes}"}

  defp check_size(_body), do: :ok

  # Counts brackets with the VM's binary search, stopping at the limit: a 1 MiB body of
  # nested lists is refused after a few hundred bytes, before any parsing.
  defp check_brackets(body), do: count_brackets(body, 0, 0)

  defp count_brackets(_body, _from, count) when count > @max_brackets,
    do: malformed("the body nests more lists or objects than any request needs")

  defp count_brackets(body, from, count) do
    case :binary.match(body, ["[", "{"], scope: {from, byte_size(body) - from}) do
      {at, 1} -> count_brackets(body, at + 1, count + 1)
      :nomatch -> :ok
    end
  end

  # Refuses a number literal longer than `max_number_chars` before the decoder sees it:
  # the decoder makes a bignum of an integer, and parsing (or printing) a bignum costs
  # the square of its digits, so one 300,000-digit `n` would hold a processor for
  # seconds. One pass over the body: outside strings each byte is counted into the
  # current run of number characters; a string is skipped with the VM's binary search
  # for its closing quote, so digits inside a prompt are never counted.
  defp check_numbers(body), do: number_run(body, 0)

  defp number_run(<<c, rest::binary>>, run) when c in ?0..?9 or c in [?-, ?+, ?., ?e, ?E] do
    if run < @max_number_chars,
      do: number_run(rest, run + 1),
      else: too_large("a number in the body is longer than #{@max_number_chars} characters")
  end

  defp number_run(<<?", rest::binary>>, _run), do: skip_string(rest)
  defp number_run(<<_, rest::binary>>, _run), do: number_run(rest, 0)
  defp number_run(<<>>, _run), do: :ok

  defp skip_string(body) do
    with {at, 1} <- :binary.match(body, ["\"", "\\"]),
         <<_::binary-size(at), mark, rest::binary>> = body do
      case {mark, rest} do
        {?", rest} -> number_run(rest, 0)
        {?\\, <<_escaped, rest::binary>>} -> skip_string(rest)
        # a backslash that ends the body: the decoder refuses it
        {?\\, <<>>} -> :ok
      end
    else
      # an unterminated string: the decoder refuses it
      :nomatch -> :ok
    end
  end

  # Strict UTF-8, and the body decoded as a key list first, so that a repeated key is
  # an error rather than silently "last one wins". Only the top level becomes a map: no
  # field takes an object, so a nested one stays a key list, which every field's check
  # refuses as malformed, and the numbers of a matrix are not walked twice.
  defp decode_json(body) do
    case :jsx.decode(body, [{:return_maps, false}, {:strict, [:utf8]}]) do
      [{}] ->
        {:ok, %{}}

      [{key, _} | _] = pairs when is_binary(key) ->
        map = Map.new(pairs)

        if map_size(map) == length(pairs),
          do: {:ok, map},
          else: malformed("the body repeats a key")

      _ ->
        malformed("the body must be a JSON object")
    end
  rescue
    _ -> malformed("the body is not valid JSON (UTF-8)")
  end

  defp addressed(map, id, op) do
    if Map.has_key?(map, "model") or Map.has_key?(map, "op"),
      do:
        malformed(
          ~s(the model and the op are in the URL path; leave "model" and "op" out of the body)
        ),
      else: {:ok, map |> Map.put("model", id) |> Map.put("op", op) |> Map.put_new("v", 1)}
  end

  defp check_version(%{"v" => 1}), do: :ok

  defp check_version(%{"v" => v}) when is_integer(v),
    do: {:error, :unsupported_version, "wire version #{v} is not supported; send \"v\": 1"}

  defp check_version(_), do: malformed("\"v\" is required and must be the integer 1")

  defp model_and_op(%{"model" => id, "op" => op}) when is_binary(id) and is_binary(op) do
    cond do
      not valid_id?(id) ->
        {:error, :unknown_model,
         "\"model\" must be a registry id such as \"vae\": lowercase letters, digits and _.-, at most 64"}

      op not in @all_ops ->
        {:error, :unknown_op, "unknown op; ops are #{Enum.join(@all_ops, ", ")}"}

      true ->
        {:ok, id, op}
    end
  end

  defp model_and_op(_), do: malformed("\"model\" and \"op\" are required strings")

  @doc ~S"""
  Whether `id` can name a model: lowercase letters, digits and `_.-`, at most 64, the
  whole string (no trailing newline), so an id can never name a path.

      iex> ServeEx.Request.valid_id?("vae")
      true
      iex> ServeEx.Request.valid_id?("vae\n")
      false
      iex> ServeEx.Request.valid_id?("../vae")
      false
  """
  @spec valid_id?(String.t()) :: boolean()
  def valid_id?(id), do: Regex.match?(~r/\A[a-z0-9][a-z0-9_.-]{0,63}\z/, id)

  defp check_fields(map, op) do
    allowed = ["v", "model", "op" | @fields[op]]

    case Map.keys(map) -- allowed do
      [] ->
        :ok

      extra ->
        named = extra |> Enum.sort() |> Enum.take(3) |> Enum.map_join(", ", &field_name/1)
        more = if length(extra) > 3, do: " and #{length(extra) - 3} more", else: ""

        malformed(
          "unexpected field #{named}#{more} for op #{op}; allowed: #{Enum.join(allowed, ", ")}"
        )
    end
  end

  # A client's field name in an error: escaped, and cut to 24 characters.
  defp field_name(name) do
    if String.length(name) > 24,
      do: inspect(String.slice(name, 0, 24)) <> "...",
      else: inspect(name)
  end

  defp arguments("generate", map) do
    with {:ok, n} <- integer(map, "n", :required, 1, @limits["max_n"]),
         {:ok, seed} <- seed(map),
         {:ok, encoding} <- encoding(map) do
      {:ok, %{n: n, seed: seed, encoding: encoding}, n}
    end
  end

  defp arguments(op, map) when op in ["decode", "encode"] do
    key = if op == "decode", do: "z", else: "x"
    limit = if op == "decode", do: @limits["max_z_rows"], else: @limits["max_x_rows"]

    with {:ok, rows} <- matrix(map, key, limit),
         {:ok, encoding} <- encoding(map) do
      {:ok, %{rows: rows, encoding: encoding}, length(rows)}
    end
  end

  defp arguments("generate_text", map) do
    with {:ok, prompt} <- prompt(map),
         {:ok, max_new} <-
           integer(map, "max_new_tokens", :required, 1, @limits["max_new_tokens"]),
         {:ok, temperature} <- temperature(map),
         {:ok, top_k} <- integer(map, "top_k", nil, 1, @limits["max_top_k"]),
         {:ok, stream} <- stream(map),
         {:ok, stop} <- stop(map),
         {:ok, seed} <- if(stream, do: stream_seed(map), else: seed(map)) do
      {:ok,
       %{
         prompt: prompt,
         max_new_tokens: max_new,
         temperature: temperature,
         top_k: top_k,
         seed: seed,
         stream: stream,
         stop: stop
       }, 1}
    end
  end

  defp stream(map) do
    case Map.get(map, "stream", false) do
      flag when is_boolean(flag) -> {:ok, flag}
      _ -> malformed(~s["stream" must be true or false])
    end
  end

  # Strings that end the text where the first of them appears (left out of the text).
  defp stop(map) do
    {max_strings, max_chars} = {@limits["max_stop_strings"], @limits["max_stop_chars"]}

    case Map.get(map, "stop", []) do
      stops when not is_list(stops) ->
        malformed(~s["stop" must be a list of strings])

      stops when length(stops) > max_strings ->
        too_large(~s["stop" has more strings than the limit of #{max_strings}])

      stops ->
        cond do
          not Enum.all?(stops, &is_binary/1) ->
            malformed(~s["stop" must be a list of strings])

          "" in stops ->
            invalid(~s[every "stop" string must be non-empty])

          Enum.any?(stops, &(String.length(&1) > max_chars)) ->
            too_large(~s[a "stop" string is longer than #{max_chars} characters])

          true ->
            {:ok, stops}
        end
    end
  end

  # A stream restarted after a redelivery must produce the same frames, so without a
  # given seed the batcher derives one from the request's correlation id (nil here).
  defp stream_seed(map), do: integer(map, "seed", nil, 0, @limits["max_seed"])

  defp integer(map, key, default, min, max) do
    case Map.fetch(map, key) do
      :error when default == :required ->
        malformed("\"#{key}\" is required")

      :error ->
        {:ok, default}

      {:ok, v} when not is_integer(v) ->
        malformed("\"#{key}\" must be an integer")

      {:ok, v} when v < min ->
        invalid("\"#{key}\" must be at least #{min}")

      {:ok, v} when is_integer(max) and v > max ->
        too_large("\"#{key}\" is above the limit of #{max}")

      {:ok, v} ->
        {:ok, v}
    end
  end

  defp seed(map) do
    case integer(map, "seed", nil, 0, @limits["max_seed"]) do
      {:ok, nil} -> {:ok, :rand.uniform(@limits["max_seed"] + 1) - 1}
      other -> other
    end
  end

  # How the reply carries its tensors: base64 in the JSON body (the default), or the raw
  # little-endian f32 bytes as the body, with the shape in AMQP headers.
  defp encoding(map) do
    case Map.get(map, "encoding", "base64") do
      "base64" -> {:ok, :base64}
      "f32" -> {:ok, :f32}
      e when is_binary(e) -> invalid(~s["encoding" must be "base64" (the default) or "f32"])
      _ -> malformed(~s["encoding" must be a string: "base64" or "f32"])
    end
  end

  # Between 0 (greedy) and min_temperature, logits / t overflows float32 and sampling
  # would draw from NaN weights.
  defp temperature(map) do
    {min, max} = {@limits["min_temperature"], @limits["max_temperature"]}

    case Map.get(map, "temperature", 0.0) do
      t when not is_number(t) -> malformed("\"temperature\" must be a number")
      t when t < 0 -> invalid("\"temperature\" must be >= 0 (0 is greedy)")
      t when t > 0 and t < min -> invalid("\"temperature\" must be 0 (greedy) or at least #{min}")
      t when t > max -> too_large("\"temperature\" is above the limit of #{max}")
      t -> {:ok, t * 1.0}
    end
  end

  defp prompt(map) do
    max = @limits["max_prompt_chars"]

    case Map.get(map, "prompt") do
      p when not is_binary(p) ->
        malformed("\"prompt\" is a required string")

      "" ->
        invalid("\"prompt\" is empty")

      p ->
        if String.length(p) > max,
          do: too_large("\"prompt\" is longer than #{max} characters"),
          else: {:ok, p}
    end
  end

  defp matrix(map, key, limit) do
    case Map.get(map, key) do
      rows when not is_list(rows) ->
        malformed("\"#{key}\" is a required list of rows of numbers")

      [] ->
        invalid("\"#{key}\" has no rows")

      rows when length(rows) > limit ->
        too_large("\"#{key}\" has more rows than the limit of #{limit}")

      rows ->
        cond do
          not Enum.all?(
            rows,
            &(is_list(&1) and &1 != [] and Enum.all?(&1, fn v -> is_number(v) end))
          ) ->
            malformed("every row of \"#{key}\" must be a non-empty list of numbers")

          rows |> Enum.map(&length/1) |> Enum.uniq() |> length() > 1 ->
            invalid("the rows of \"#{key}\" have different widths")

          not Enum.all?(rows, fn row -> Enum.all?(row, &(abs(&1) <= @f32_max)) end) ->
            invalid("every value of \"#{key}\" must be a finite number within float32 range")

          true ->
            {:ok, rows}
        end
    end
  end

  defp find_model(lookup, id) do
    case lookup.(id) do
      {:ok, model} -> {:ok, model}
      :error -> {:error, :unknown_model, "no model #{inspect(id)} is served"}
    end
  end

  defp check_op_of_arch(%{arch: arch}, op) do
    if op in Map.get(@ops_by_arch, arch, []),
      do: :ok,
      else: {:error, :unknown_op, "op #{op} is not available for a #{arch} model"}
  end

  defp malformed(message), do: {:error, :malformed_request, message}
  defp invalid(message), do: {:error, :invalid_argument, message}
  defp too_large(message), do: {:error, :too_large, message}
end
