defmodule ServeEx.Reply do
  @moduledoc "Reply bodies of wire version 1 (`shared_schema/wire/reply.schema.json`)."

  @doc """
  An error reply.

      iex> ServeEx.Reply.error(:unknown_model, "no model 'x' is served")
      ~s({"error":{"code":"unknown_model","message":"no model 'x' is served"},"ok":false,"v":1})
  """
  @spec error(atom(), String.t()) :: binary()
  def error(code, message),
    do:
      encode(%{
        "v" => 1,
        "ok" => false,
        "error" => %{"code" => Atom.to_string(code), "message" => message}
      })

  @doc "A tensor reply: shape and base64 of the little-endian f32 bytes."
  @spec tensor(ServeEx.Engine.tensor()) :: binary()
  def tensor({rows, cols, bytes}),
    do:
      encode(%{
        "v" => 1,
        "ok" => true,
        "shape" => [rows, cols],
        "dtype" => "f32",
        "data" => Base.encode64(bytes)
      })

  @doc "An encode reply: the posterior mean and log-variance."
  @spec posterior(ServeEx.Engine.tensor(), ServeEx.Engine.tensor()) :: binary()
  def posterior({rows, cols, mu}, {_, _, logvar}) do
    encode(%{
      "v" => 1,
      "ok" => true,
      "shape" => [rows, cols],
      "dtype" => "f32",
      "mu" => Base.encode64(mu),
      "logvar" => Base.encode64(logvar)
    })
  end

  @doc "A text reply."
  @spec text(String.t()) :: binary()
  def text(text), do: encode(%{"v" => 1, "ok" => true, "text" => text})

  defp encode(map), do: :jsx.encode(map)
end
