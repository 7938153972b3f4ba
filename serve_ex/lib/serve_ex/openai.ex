defmodule ServeEx.OpenAI do
  @moduledoc """
  OpenAI's completions API in terms of the wire format: a `/v1/completions` body
  becomes a `generate_text` request, and its reply becomes a completion.

  | OpenAI | wire | note |
  |---|---|---|
  | `model`, `prompt` (a string) | `model`, `prompt` | |
  | `max_tokens` | `max_new_tokens` | default 16, as OpenAI's |
  | `temperature` | `temperature` | default 1, as OpenAI's; 0 is greedy; at most 2 |
  | `seed`, `top_k` (an extension), `stream` | the same | |
  | `stop` | `stop` | a string or a list of up to 4 |
  | `n` | | only 1 |
  | `user` | | accepted and ignored |

  A token of these models is one character (a Unicode code point), so
  `usage.prompt_tokens` is the prompt's length in code points; `completion_tokens`
  counts every token generated, a stop string's included.
  """

  import Bitwise
  alias ServeEx.Request

  # Fields OpenAI defines that change what is generated, and that these models lack.
  @unsupported ~w(suffix logprobs echo best_of logit_bias presence_penalty frequency_penalty top_p)
  @fields ~w(model prompt max_tokens temperature seed top_k stop stream n user)
  @max_temperature 2

  @typedoc """
  What the reply needs of the request: its model id and prompt, whether it streams, and
  the completion's id and creation time.
  """
  @type call :: %{
          model: String.t(),
          prompt: String.t(),
          stream: boolean(),
          id: String.t(),
          created: non_neg_integer()
        }

  @doc """
  The wire request of a `/v1/completions` body, and what its reply needs; or the
  error, `{:error, status, param, message}`.

      iex> {:ok, json, call} = ServeEx.OpenAI.request(~s({"model": "gpt", "prompt": "A", "max_tokens": 3}))
      iex> {:jsx.decode(json, [:return_maps])["max_new_tokens"], call.stream}
      {3, false}
      iex> ServeEx.OpenAI.request(~s({"model": "gpt", "prompt": "A", "n": 2}))
      {:error, 400, "n", "only n = 1 is supported"}
  """
  @spec request(binary()) ::
          {:ok, binary(), call()} | {:error, 400 | 413, String.t() | nil, String.t()}
  def request(body) do
    with {:ok, map} <- decode(body),
         :ok <- known_fields(map),
         {:ok, model} <- string(map, "model"),
         {:ok, prompt} <- string(map, "prompt"),
         {:ok, max_tokens} <- max_tokens(map),
         {:ok, temperature} <- temperature(map),
         :ok <- one_choice(map) do
      wire =
        map
        |> Map.take(~w(seed top_k stream))
        |> Map.merge(%{
          "v" => 1,
          "model" => model,
          "op" => "generate_text",
          "prompt" => prompt,
          "max_new_tokens" => max_tokens,
          "temperature" => temperature,
          "stop" => stops(Map.get(map, "stop", []))
        })

      call = %{
        model: model,
        prompt: prompt,
        stream: map["stream"] == true,
        id: "cmpl-" <> Integer.to_string(:rand.uniform(1 <<< 64), 36),
        created: System.os_time(:second)
      }

      {:ok, :jsx.encode(wire), call}
    end
  end

  defp decode(body) do
    case Request.decode(body) do
      {:ok, map} -> {:ok, map}
      {:error, :too_large, message} -> {:error, 413, nil, message}
      {:error, _code, message} -> {:error, 400, nil, message}
    end
  end

  defp known_fields(map) do
    case Enum.find(Map.keys(map), &(&1 not in @fields)) do
      nil -> :ok
      field when field in @unsupported -> {:error, 400, field, "#{field} is not supported"}
      _field -> {:error, 400, nil, "unknown field; the fields are #{Enum.join(@fields, ", ")}"}
    end
  end

  defp string(map, key) do
    case Map.get(map, key) do
      s when is_binary(s) -> {:ok, s}
      _ -> {:error, 400, key, "#{key} is a required string"}
    end
  end

  defp max_tokens(map) do
    max = Request.max_new_tokens()

    case Map.get(map, "max_tokens", 16) do
      n when is_integer(n) and n in 1..max -> {:ok, n}
      _ -> {:error, 400, "max_tokens", "max_tokens must be an integer from 1 to #{max}"}
    end
  end

  defp temperature(map) do
    case Map.get(map, "temperature", 1) do
      t when is_number(t) and t >= 0 and t <= @max_temperature ->
        {:ok, t}

      _ ->
        {:error, 400, "temperature",
         "temperature must be a number from 0 (greedy) to #{@max_temperature}"}
    end
  end

  defp one_choice(map) do
    if Map.get(map, "n", 1) == 1, do: :ok, else: {:error, 400, "n", "only n = 1 is supported"}
  end

  # one string or a list of them; the wire checks the rest
  defp stops(stop) when is_binary(stop), do: [stop]
  defp stops(stop), do: stop

  @doc """
  The completion of a text reply (the wire's JSON): the new text, why it ended, the
  token counts.
  """
  @spec completion(call(), binary()) :: map()
  def completion(call, reply_json) do
    reply = :jsx.decode(reply_json, [:return_maps])

    text =
      binary_part(
        reply["text"],
        byte_size(call.prompt),
        byte_size(reply["text"]) - byte_size(call.prompt)
      )

    prompt_tokens = code_points(call.prompt)

    call
    |> envelope()
    |> Map.merge(%{
      "choices" => [choice(text, reply["finish_reason"])],
      "usage" => %{
        "prompt_tokens" => prompt_tokens,
        "completion_tokens" => reply["new_tokens"],
        "total_tokens" => prompt_tokens + reply["new_tokens"]
      }
    })
  end

  @doc "A streamed completion's chunk: new text, or (with a finish reason) the last one."
  @spec chunk(call(), String.t(), String.t() | nil) :: map()
  def chunk(call, text, finish_reason),
    do: Map.put(envelope(call), "choices", [choice(text, finish_reason)])

  defp envelope(call) do
    %{
      "id" => call.id,
      "object" => "text_completion",
      "created" => call.created,
      "model" => call.model
    }
  end

  defp choice(text, finish_reason),
    do: %{
      "text" => text,
      "index" => 0,
      "logprobs" => :null,
      "finish_reason" => json(finish_reason)
    }

  # JSON's null (jsx writes nil as a string)
  defp json(nil), do: :null
  defp json(value), do: value

  defp code_points(text), do: text |> String.to_charlist() |> length()

  @doc """
  OpenAI's error object for a wire error reply: its status, and the body. The field a
  message names (its first quoted word) is the error's `param`.

      iex> reply = ServeEx.Reply.error(:too_large, ~s("prompt" is longer than 1024 characters))
      iex> {400, body} = ServeEx.OpenAI.error(reply)
      iex> body["error"]["param"]
      "prompt"
  """
  @spec error(binary()) :: {100..599, map()}
  def error(reply_json) do
    %{"code" => code, "message" => message} = :jsx.decode(reply_json, [:return_maps])["error"]
    param = param(code, message)
    {status(code), error_body(code, param, message)}
  end

  defp param(code, _message) when code in ~w(unknown_model unknown_op), do: "model"

  defp param(_code, message) do
    with [_, field] <- Regex.run(~r/"([a-z_]+)"/, message), do: field
  end

  @doc "OpenAI's error object."
  @spec error_body(String.t(), String.t() | nil, String.t()) :: map()
  def error_body(code, param, message) do
    type = if code in ~w(internal), do: "server_error", else: "invalid_request_error"
    %{"error" => %{"message" => message, "type" => type, "param" => json(param), "code" => code}}
  end

  # A wrong request is 400 whatever it got wrong (OpenAI's way), the model included.
  defp status(code)
       when code in ~w(malformed_request invalid_argument too_large unknown_model unknown_op unsupported_version),
       do: 400

  defp status("overloaded"), do: 429
  defp status("deadline_exceeded"), do: 504
  defp status(_internal), do: 500
end
