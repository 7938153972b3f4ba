defmodule ServeEx.HTTP.Inference do
  @moduledoc """
  `POST /v1/models/{id}/{op}`, op one of `generate`, `decode`, `encode`,
  `generate_text`. The body is a queued request's JSON without `model` and `op`, which
  the path gives (`v` may be left out). The request goes through the same validation,
  admission and batchers as AMQP traffic, so the two are batched together; this
  handler's process validates it, then waits for its reply.

  | reply | status |
  |---|---|
  | a result | 200 |
  | `malformed_request`, `unsupported_version`, `invalid_argument` | 400 |
  | `unknown_model`, `unknown_op` | 404 |
  | a method other than POST | 405 |
  | a content type other than `application/json` | 415 |
  | a `Host` that is not one of `HTTP_HOSTS` | 421 |
  | `too_large` (an oversized body is refused before it is read; a chunked one once it passes the limit) | 413 |
  | a body that did not all arrive within 10 s | 408 |
  | `overloaded` (with `retry-after`) | 429 |
  | the node is draining | 503 |
  | `deadline_exceeded` (`x-deadline-ms` header, as on AMQP) | 504 |
  | `internal` | 500 |

  With `"stream": true`, a `generate_text` reply is a stream of server-sent events
  (`text/event-stream`), one per frame: `event: chunk` frames with the new text, then
  one `event: done` frame, `ok` or with the error (the same JSON as the AMQP frames).
  A stream cut short (the node died, the connection dropped) is resumed as server-sent
  events are: the same request again, to any node, with `Last-Event-ID` set to the last
  frame received; the stream goes on from the next frame. The text is only the same
  when the generation is: a resumable request carries an `x-request-id`, from which,
  with the body, the seed is derived when the body gives none (as the correlation id
  does on AMQP). `Last-Event-ID` without `x-request-id` is refused with 400.

  Error bodies are the wire's JSON error replies. With `"encoding": "f32"` a tensor
  reply is `application/octet-stream`: the raw little-endian f32 values, with headers
  `x-dtype: f32`, `x-shape: rows,cols` and `x-fields` (`data`, or `mu,logvar`).
  """
  alias ServeEx.{Reply, Request, StreamCursor}
  alias ServeEx.HTTP.{Body, Waiters}

  # Without a deadline, the longest a handler waits: a 1,024-token generation queued
  # behind others waiting to join its model's decoding batch.
  @wait_ms 300_000
  # With one, how long after it the batcher's own deadline_exceeded reply may take.
  @grace_ms 1_000
  # The last frame number a stream can reach: a frame per new token at most, then the
  # done frame (numbered from 0).
  @last_frame Request.max_new_tokens()
  @frame_digits @last_frame |> Integer.to_string() |> byte_size()

  @doc false
  def init(req, hosts) do
    if ServeEx.HTTP.served_host?(req, hosts),
      do: {:ok, handle(req), hosts},
      else: {:ok, ServeEx.HTTP.misdirected(req), hosts}
  end

  defp handle(%{method: "POST"} = req) do
    case Body.read(req) do
      {:ok, body, req} -> infer(req, body)
      {:error, status, code, message, req} -> reply(req, status, Reply.error(code, message))
    end
  end

  defp handle(req) do
    body = Reply.error(:malformed_request, "use POST with a JSON body")
    :cowboy_req.reply(405, %{"allow" => "POST", "content-type" => "application/json"}, body, req)
  end

  defp infer(req, body) do
    request_id = :cowboy_req.header("x-request-id", req, nil)

    case resume_cursor(req, request_id) do
      {:ok, cursor} ->
        infer(req, body, request_id, cursor)

      {:error, message} ->
        reply(req, 400, Reply.error(:malformed_request, message))
    end
  end

  # The cursor a stream starts from: past the frame `Last-Event-ID` names, if any.
  defp resume_cursor(req, request_id) do
    case {:cowboy_req.header("last-event-id", req, nil), request_id} do
      {nil, _} ->
        {:ok, %StreamCursor{}}

      {_, nil} ->
        {:error, "resuming a stream (Last-Event-ID) needs the x-request-id of the first request"}

      {text, _} ->
        case byte_size(text) <= @frame_digits and Integer.parse(text) do
          {seq, ""} when seq in 0..@last_frame -> {:ok, StreamCursor.after_frame(seq)}
          _ -> {:error, "Last-Event-ID must be a frame number from 0 to #{@last_frame}"}
        end
    end
  end

  defp infer(req, body, request_id, cursor) do
    deadline = deadline(:cowboy_req.header("x-deadline-ms", req, nil))

    fields = [
      payload: body,
      # seeds a stream given none, as a delivery's correlation id does
      correlation_id: request_id,
      deadline: deadline,
      route: {:cowboy_req.binding(:model, req), :cowboy_req.binding(:op, req)}
    ]

    Waiters.submit(fields, &await_reply(req, &1, deadline, cursor))
  end

  defp await_reply(req, ref, deadline, cursor) do
    receive do
      {:stream_chunk, ^ref, text} ->
        stream(req, ref, cursor, text, wait_ms(deadline))

      {:stream_restart, ^ref} ->
        # no chunk came before the run was retried: the retried run starts the stream
        await_reply(req, ref, deadline, cursor)

      {^ref, {:stream_end, _key, ending}, label} ->
        {_seq, json} = StreamCursor.last(cursor, ending)
        reply(req, status(label), json)

      {^ref, body, label} ->
        reply(req, status(label), body)
    after
      wait_ms(deadline) ->
        reply(req, 504, Reply.error(:deadline_exceeded, "no result in time"))
    end
  end

  # A streamed generation as server-sent events, one per frame (the AMQP frames' JSON):
  # `event: chunk` with the new text, then `event: done` (ok, or the error).
  # A retried run repeats the chunks already sent, and a resumed one those the client
  # has; `ServeEx.StreamCursor` skips them.
  defp stream(req, ref, cursor, first, wait_ms) do
    headers = %{"content-type" => "text/event-stream", "cache-control" => "no-cache"}
    req = :cowboy_req.stream_reply(200, headers, req)
    stream_rest(req, ref, chunk(req, cursor, first), wait_ms)
  end

  defp chunk(req, cursor, text) do
    case StreamCursor.frame(cursor, text) do
      {nil, cursor} ->
        cursor

      {{seq, json}, cursor} ->
        :cowboy_req.stream_body(event(seq, "chunk", json), :nofin, req)
        cursor
    end
  end

  # the last frame, and the end of the response
  defp finish(req, cursor, ending) do
    {seq, json} = StreamCursor.last(cursor, ending)
    :cowboy_req.stream_body(event(seq, "done", json), :fin, req)
    req
  end

  defp stream_rest(req, ref, cursor, wait_ms) do
    receive do
      {:stream_chunk, ^ref, text} ->
        stream_rest(req, ref, chunk(req, cursor, text), wait_ms)

      {:stream_restart, ^ref} ->
        stream_rest(req, ref, StreamCursor.restart(cursor), wait_ms)

      {^ref, {:stream_end, _key, ending}, _label} ->
        finish(req, cursor, ending)

      # the generation failed, and failed again alone: the stream ends with that error
      {^ref, _error_reply, label} ->
        finish(req, cursor, {label, "the service failed on this request"})
    after
      wait_ms -> finish(req, cursor, {:deadline_exceeded, "no result in time"})
    end
  end

  defp event(seq, name, json),
    do: ["id: ", Integer.to_string(seq), "\nevent: ", name, "\ndata: ", json, "\n\n"]

  # The header as AMQP carries it: a whole number, or what the client sent (refused).
  defp deadline(nil), do: nil

  defp deadline(text) do
    case Integer.parse(text) do
      {ms, ""} -> ms
      _ -> text
    end
  end

  defp wait_ms(deadline) when is_integer(deadline),
    do: max(deadline - System.os_time(:millisecond), 0) + @grace_ms

  defp wait_ms(_none), do: @wait_ms

  @doc """
  The HTTP status of a reply's label (a wire error code, or `:ok`).

      iex> ServeEx.HTTP.Inference.status(:unknown_model)
      404
  """
  @spec status(atom()) :: 100..599
  def status(:ok), do: 200

  def status(code) when code in [:malformed_request, :unsupported_version, :invalid_argument],
    do: 400

  def status(code) when code in [:unknown_model, :unknown_op], do: 404
  def status(:too_large), do: 413
  def status(:overloaded), do: 429
  def status(:deadline_exceeded), do: 504
  def status(_internal), do: 500

  defp reply(req, 200, {:f32, {rows, cols}, fields, data}) do
    headers = %{
      "content-type" => "application/octet-stream",
      "x-dtype" => "f32",
      "x-shape" => "#{rows},#{cols}",
      "x-fields" => Enum.join(fields, ",")
    }

    :cowboy_req.reply(200, headers, data, req)
  end

  defp reply(req, status, json) do
    headers = %{"content-type" => "application/json"}
    headers = if status == 429, do: Map.put(headers, "retry-after", "1"), else: headers
    :cowboy_req.reply(status, headers, json, req)
  end
end
