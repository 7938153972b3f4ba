defmodule ServeEx.TextSequenceTest do
  @moduledoc "A text's end at a stop string, and its chunks, against the definition on strings."
  use ExUnit.Case, async: true

  alias ServeEx.Pipeline.TextSequence

  # Feeds `tokens` one by one: the chunks sent, the final text, why it ended.
  defp run(tokens, stops) do
    Enum.reduce_while(tokens, {TextSequence.new(stops), []}, fn token, {seq, chunks} ->
      case TextSequence.add(seq, token) do
        {:stop, seq, chunk} -> {:halt, {seq, [chunk | chunks], :stop}}
        {:more, seq, chunk} -> {:cont, {seq, [chunk | chunks]}}
      end
    end)
    |> case do
      {seq, chunks, :stop} ->
        {Enum.reverse(chunks), seq.text, :stop}

      {seq, chunks} ->
        {Enum.reverse([TextSequence.rest(seq) |> elem(1) | chunks]), seq.text, :length}
    end
  end

  test "the text ends before the first stop string; the chunks add up to it and never hold any of a stop" do
    :rand.seed(:exsss, {1, 2, 3})
    alphabet = ~w(a b c é ☃ \n)

    for _ <- 1..2_000 do
      tokens = for _ <- 1..:rand.uniform(40), do: Enum.random(alphabet)

      stops =
        for _ <- 1..:rand.uniform(3),
            do: Enum.map_join(1..:rand.uniform(3), fn _ -> Enum.random(alphabet) end)

      whole = Enum.join(tokens)

      # the definition: the shortest prefix that ends in a stop string, less that string
      expected =
        Enum.find_value(1..length(tokens), {whole, :length}, fn n ->
          prefix = tokens |> Enum.take(n) |> Enum.join()

          case :binary.matches(prefix, stops) do
            [] ->
              nil

            matches ->
              {binary_part(prefix, 0, matches |> Enum.map(&elem(&1, 0)) |> Enum.min()), :stop}
          end
        end)

      {chunks, text, reason} = run(tokens, stops)
      assert {text, reason} == expected, inspect({tokens, stops})
      sent = chunks |> Enum.reject(&is_nil/1)
      assert Enum.join(sent) == text
      assert Enum.all?(sent, &String.valid?/1)
    end
  end

  test "without stop strings the first token goes out at once, then a chunk every 8 tokens" do
    {chunks, text, :length} = run(String.codepoints(String.duplicate("x", 20)), [])
    x = &String.duplicate("x", &1)
    assert Enum.reject(chunks, &is_nil/1) == [x.(1), x.(7), x.(8), x.(4)]
    assert text == String.duplicate("x", 20)
  end
end
