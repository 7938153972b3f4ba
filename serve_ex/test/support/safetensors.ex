defmodule ServeEx.Test.Safetensors do
  @moduledoc "Reads the tensors of a small .safetensors file (F32 and I64) for golden tests."

  @spec read(Path.t()) :: %{String.t() => {[non_neg_integer()], [number()]}}
  def read(path) do
    <<len::little-64, header::binary-size(len), data::binary>> = File.read!(path)

    header
    |> :jsx.decode([:return_maps])
    |> Map.delete("__metadata__")
    |> Map.new(fn {name, %{"dtype" => dtype, "shape" => shape, "data_offsets" => [from, to]}} ->
      bytes = binary_part(data, from, to - from)
      {name, {shape, values(dtype, bytes)}}
    end)
  end

  defp values("F32", bytes), do: for(<<v::float-32-little <- bytes>>, do: v)
  defp values("I64", bytes), do: for(<<v::signed-64-little <- bytes>>, do: v)

  @spec f32_binary([number()]) :: binary()
  def f32_binary(values), do: for(v <- values, into: <<>>, do: <<v::float-32-little>>)
end
