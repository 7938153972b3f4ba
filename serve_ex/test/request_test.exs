defmodule ServeEx.RequestTest do
  @moduledoc "Every example message of shared_schema/examples gets the reply code it is labelled with."
  use ExUnit.Case, async: true

  alias ServeEx.{Message, ModelRegistry, Request}
  alias ServeEx.Pipeline.Batcher
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
          acknowledger: {nil, nil, 0},
          redelivered: false,
          received_at: 0,
          request: request,
          model_id: request.model.id
        }

        [{_, {:reply, _body, label}}] = Batcher.handle_batch(request.model, [message])
        label
    end
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
      bytes = :crypto.strong_rand_bytes(:rand.uniform(300))
      assert reply_code(bytes, lookup) in [:malformed_request, :unsupported_version]
    end
  end

  test "a body over the size limit is too large" do
    assert {:error, :too_large, _} =
             Request.parse(:binary.copy("a", 2_000_000), fn _ -> :error end)
  end
end
