defmodule ServeEx.RequestTest do
  @moduledoc "Every example message of shared_schema/examples gets the reply code it is labelled with."
  use ExUnit.Case, async: true

  alias ServeEx.{Message, ModelRegistry, Request}
  alias ServeEx.Pipeline.{ImageBatch, TextScheduler}
  alias ServeEx.Test.Paths

  # the models of this suite alone: nothing global, so other suites run beside it
  setup_all do
    models = ModelRegistry.read_dir(Paths.service_models())
    assert Map.keys(models) |> Enum.sort() == ["gpt", "vae", "wgan"]
    %{lookup: &Map.fetch(models, &1)}
  end

  defp body(%{"raw" => raw}), do: raw
  defp body(%{"body" => body}), do: :jsx.encode(body)

  # The code a request gets: from validation, or from the engine when it is valid.
  defp reply_code(payload, lookup) do
    case Request.parse(payload, lookup) do
      {:error, code, _message} ->
        code

      {:ok, request} ->
        message = %Message{
          payload: payload,
          reply_to: "r",
          correlation_id: "c",
          acknowledger: ServeEx.HTTP.Acknowledger.new(make_ref()),
          redelivered: false,
          received_at: 0,
          request: request,
          model_id: request.model.id
        }

        label(request, message)
    end
  end

  defp label(%{op: "generate_text"} = request, message) do
    # a stream's label is its text's; alone, with no one to send its frames to
    message = put_in(message.request.args.stream, false)
    {:reply, _body, label} = TextScheduler.run_alone(request.model, message)
    label
  end

  defp label(request, message) do
    [{_, {:reply, _body, label}}] = ImageBatch.handle_batch(request.model, [message])
    label
  end

  test "each example gets its labelled code", %{lookup: lookup} do
    examples =
      Paths.examples() |> File.read!() |> :jsx.decode([:return_maps]) |> Map.fetch!("examples")

    mismatches =
      for example <- examples,
          got = example |> body() |> reply_code(lookup) |> to_string(),
          got != example["expect"],
          do: {example["name"], example["expect"], got}

    assert mismatches == []
    assert length(examples) > 30
  end

  test "random bytes are malformed requests", %{lookup: lookup} do
    for seed <- 1..200 do
      :rand.seed(:exsss, {seed, seed, seed})
      bytes = :rand.bytes(:rand.uniform(300))
      assert reply_code(bytes, lookup) in [:malformed_request, :unsupported_version]
    end
  end

  defp no_model(_id), do: :error

  describe "number literals" do
    defp generate(n_literal),
      do: ~s({"v": 1, "model": "vae", "op": "generate", "n": #{n_literal}})

    test "one longer than the limit is too large, and the message does not repeat it" do
      digits = String.duplicate("9", 300_000)
      assert {:error, :too_large, message} = Request.parse(generate(digits), &no_model/1)
      refute message =~ "99"
    end

    test "the limit itself is accepted as far as the number check goes" do
      limit = Paths.limits() |> File.read!() |> :jsx.decode([:return_maps])
      at_limit = "1" <> String.duplicate("0", limit["max_number_chars"] - 1)
      over = at_limit <> "0"
      # a number within the length limit reaches the range check; one past it does not
      assert {:error, :too_large, "\"n\" is above the limit of 256"} =
               Request.parse(generate(at_limit), &no_model/1)

      assert {:error, :too_large, "a number in the body is longer than" <> _} =
               Request.parse(generate(over), &no_model/1)
    end

    test "digits inside strings, escaped quotes included, are not numbers" do
      digits = String.duplicate("7", 200)

      body =
        ~s({"v": 1, "model": "gpt", "op": "generate_text", "prompt": "a\\"#{digits}\\\\", "max_new_tokens": 1})

      assert {:error, :unknown_model, _} = Request.parse(body, &no_model/1)
    end

    test "a number after a string that ends in an escaped backslash is counted" do
      digits = String.duplicate("7", 200)
      body = ~s({"v": 1, "model": "vae\\\\", "op": "generate", "n": #{digits}})
      assert {:error, :too_large, "a number in the body" <> _} = Request.parse(body, &no_model/1)
    end
  end

  test "a body over the size limit is too large" do
    assert {:error, :too_large, _} =
             Request.parse(:binary.copy("a", 2_000_000), fn _ -> :error end)
  end
end
