defmodule ServeEx.Test.Safetensors do
  @moduledoc "Reads the tensors of a small .safetensors file (F32 and I64) for golden tests."

  @spec read(Path.t()) :: %{String.t() => {[non_neg_integer()], [number()]}}
  def read(path) do
    {header, data} = header_and_data(path)

    header
    |> Map.delete("__metadata__")
    |> Map.new(fn {name, %{"dtype" => dtype, "shape" => shape, "data_offsets" => [from, to]}} ->
      bytes = binary_part(data, from, to - from)
      {name, {shape, values(dtype, bytes)}}
    end)
  end

  @doc """
  The float32 reassociation tolerance that train/golden.py stored for each output of a
  golden file: two correct evaluations may differ by this much, on any CPU.
  """
  @spec tolerances(Path.t()) :: %{String.t() => float()}
  def tolerances(path) do
    {%{"__metadata__" => %{"tolerance" => json}}, _} = header_and_data(path)
    :jsx.decode(json, [:return_maps])
  end

  defp header_and_data(path) do
    <<len::little-64, header::binary-size(len), data::binary>> = File.read!(path)
    {:jsx.decode(header, [:return_maps]), data}
  end

  defp values("F32", bytes), do: for(<<v::float-32-little <- bytes>>, do: v)
  defp values("I64", bytes), do: for(<<v::signed-64-little <- bytes>>, do: v)

  @spec f32_binary([number()]) :: binary()
  def f32_binary(values), do: for(v <- values, into: <<>>, do: <<v::float-32-little>>)
end
