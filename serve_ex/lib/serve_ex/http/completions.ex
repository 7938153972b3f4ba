defmodule ServeEx.HTTP.Completions do
  @moduledoc """
  OpenAI-compatible endpoints on the inference listener, for the clients users already
  have (the `openai` package, and any other that speaks the API):

  - `GET /v1/models`: the served models;
  - `POST /v1/completions`: a text completion (`ServeEx.OpenAI` says how its fields map
    to a `generate_text` request). It goes through the same validation, admission and
    text scheduler as every other request. With `"stream": true` the reply is
    server-sent `data: {...}` chunks, ending with `data: [DONE]`.

  Errors are OpenAI's error object: 400 for anything wrong with the request (the field
  in `param`), 413 for a body above the limit, 415 for a body that is not JSON, 429
  when the model is overloaded, 503 while the node drains, 504 when no result came in
  time, 500 when the service failed. Chat completions are not served: a character
  model has no chat template.
  """
  alias ServeEx.{ModelRegistry, OpenAI, StreamCursor}
  alias ServeEx.HTTP.{Body, Waiters}

  # The longest a handler waits: a 1,024-token generation queued behind others.
  @wait_ms 300_000

  @doc false
  def init(req, hosts) do
    if ServeEx.HTTP.served_host?(req, hosts),
      do: {:ok, handle(req, :cowboy_req.path(req)), hosts},
      else: {:ok, ServeEx.HTTP.misdirected(req), hosts}
  end

  defp handle(%{method: "GET"} = req, "/v1/models") do
    models =
      for id <- ModelRegistry.models() |> Map.keys() |> Enum.sort(),
          do: %{"id" => id, "object" => "model", "created" => 0, "owned_by" => "serve_ex"}

    json(req, 200, %{"object" => "list", "data" => models})
  end

  defp handle(%{method: "POST"} = req, "/v1/completions") do
    with {:ok, body, req} <- Body.read(req),
         {:ok, wire, call} <- OpenAI.request(body) do
      complete(req, wire, call)
    else
      {:error, status, code, message, req} ->
        json(req, status, OpenAI.error_body(Atom.to_string(code), nil, message))

      {:error, status, param, message} ->
        json(req, status, OpenAI.error_body("invalid_argument", param, message))
    end
  end

  defp handle(req, path) do
    allow = if path == "/v1/models", do: "GET", else: "POST"
    body = OpenAI.error_body("malformed_request", nil, "use #{allow}")

    :cowboy_req.reply(
      405,
      %{"allow" => allow, "content-type" => "application/json"},
      :jsx.encode(body),
      req
    )
  end

  defp complete(req, wire, call),
    do: Waiters.submit([payload: wire], &await(req, &1, call, %StreamCursor{}))

  defp await(req, ref, call, cursor) do
    receive do
      {:stream_chunk, ^ref, text} ->
        headers = %{"content-type" => "text/event-stream", "cache-control" => "no-cache"}
        req = :cowboy_req.stream_reply(200, headers, req)
        stream(req, ref, call, chunk(req, call, cursor, text))

      {:stream_restart, ^ref} ->
        await(req, ref, call, cursor)

      {^ref, {:stream_end, _key, ending}, _label} ->
        headers = %{"content-type" => "text/event-stream", "cache-control" => "no-cache"}
        finish(:cowboy_req.stream_reply(200, headers, req), call, ending)

      {^ref, body, :ok} ->
        json(req, 200, OpenAI.completion(call, body))

      {^ref, body, _error} ->
        {status, error} = OpenAI.error(body)
        json(req, status, error)
    after
      @wait_ms -> json(req, 504, OpenAI.error_body("deadline_exceeded", nil, "no result in time"))
    end
  end

  # A generation run again (a crashed step) repeats its chunks; the cursor skips them.
  defp stream(req, ref, call, cursor) do
    receive do
      {:stream_chunk, ^ref, text} ->
        stream(req, ref, call, chunk(req, call, cursor, text))

      {:stream_restart, ^ref} ->
        stream(req, ref, call, StreamCursor.restart(cursor))

      {^ref, {:stream_end, _key, ending}, _label} ->
        finish(req, call, ending)

      {^ref, _error_reply, label} ->
        finish(req, call, {label, "the service failed on this request"})
    after
      @wait_ms -> finish(req, call, {:deadline_exceeded, "no result in time"})
    end
  end

  defp chunk(req, call, cursor, text) do
    case StreamCursor.chunk(cursor) do
      {:skip, cursor} ->
        cursor

      {{:send, _seq}, cursor} ->
        event(req, OpenAI.chunk(call, text, nil), :nofin)
        cursor
    end
  end

  defp finish(req, _call, {code, message}) do
    event(req, OpenAI.error_body(Atom.to_string(code), nil, message), :nofin)
    :cowboy_req.stream_body("data: [DONE]\n\n", :fin, req)
    req
  end

  defp finish(req, call, finish_reason) do
    event(req, OpenAI.chunk(call, "", Atom.to_string(finish_reason)), :nofin)
    :cowboy_req.stream_body("data: [DONE]\n\n", :fin, req)
    req
  end

  defp event(req, map, fin),
    do: :cowboy_req.stream_body(["data: ", :jsx.encode(map), "\n\n"], fin, req)

  defp json(req, status, map) do
    headers = %{"content-type" => "application/json"}
    headers = if status == 429, do: Map.put(headers, "retry-after", "1"), else: headers
    :cowboy_req.reply(status, headers, :jsx.encode(map), req)
  end
end
