defmodule ServeEx.Bench.ParseCost do
  @moduledoc """
  What the largest and the most hostile bodies cost a processor to parse
  (`ServeEx.Request.parse/2`, no model loaded), each timed alone on one scheduler: the
  parse must stay linear in the body, whatever its numbers and strings hold.

      mix run --no-start -e 'ServeEx.Bench.ParseCost.main()'
  """
  alias ServeEx.Bench.StageCosts
  alias ServeEx.Request

  @spec main() :: :ok
  def main do
    limit = Request.max_body_bytes()
    row = "[" <> Enum.join(List.duplicate("0.125", 784), ",") <> "]"
    rows = div(limit - 64, byte_size(row) + 1)
    head = ~s({"v": 1, "model": "vae", "op": "encode", "x": [)
    largest = head <> Enum.join(List.duplicate(row, rows), ",") <> "]}"
    # the same body whose last number is one character too long: refused after a full scan
    long_last = binary_part(largest, 0, byte_size(largest) - 40) <> "," <> digits(33) <> "]]}"
    n = ~s({"v": 1, "model": "vae", "op": "generate", "n": ) <> digits(limit - 64) <> "}"
    prompt = ~s({"v": 1, "model": "gpt", "op": "generate_text", "max_new_tokens": 1, "prompt": ")

    cases = [
      {"the largest body: #{rows} rows of 784 numbers, #{byte_size(largest)} bytes", largest},
      {"the same with its last number 33 digits long (refused)", long_last},
      {"`n` of #{limit - 64} digits (refused)", n},
      {"a prompt of #{limit - 128} digits (too long, refused)", prompt <> digits(limit - 128) <> ~s("})}
    ]

    IO.puts("| body | ms to parse | reply code |\n|---|---|---|")

    for {name, body} <- cases do
      parse = fn -> Request.parse(body, fn _ -> :error end) end
      code = elem(parse.(), 1)
      IO.puts("| #{name} | #{Float.round(StageCosts.median_us(parse) / 1000, 2)} | #{code} |")
    end

    :ok
  end

  defp digits(count), do: String.duplicate("9", count)
end
