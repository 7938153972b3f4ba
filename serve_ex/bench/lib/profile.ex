defmodule ServeEx.Bench.Profile do
  @moduledoc """
  Which processes of the running node do a request's work: the reductions of every
  process over a window (`:recon.proc_window/3`), summed by kind (a pipeline stage, or
  a process of the AMQP client), per request settled in the window. Run inside a
  loaded node: `make bench-service` does it at n=1, 64 in flight.
  """

  @doc "Prints reductions per request by kind over `window_ms`."
  @spec main(pos_integer()) :: :ok
  def main(window_ms \\ 3_000) do
    settled_before = settled()
    window = :recon.proc_window(:reductions, 1_000_000, window_ms)
    requests = max(settled() - settled_before, 1)

    by_kind =
      window
      |> Enum.group_by(fn {pid, _, _} -> kind(pid) end, fn {_, reductions, _} -> reductions end)
      |> Enum.map(fn {kind, reductions} -> {kind, Enum.sum(reductions) / requests} end)
      |> Enum.sort_by(fn {_, per_request} -> -per_request end)

    IO.puts("#{requests} requests settled in #{window_ms} ms\n")
    IO.puts("| process | reductions per request |\n|---|---|")
    for {kind, per} <- by_kind, per >= 1, do: IO.puts("| #{kind} | #{round(per)} |")
    :ok
  end

  # requests settled so far, every model and outcome
  defp settled do
    :ets.match(ServeEx.Metrics, {{:serve_ex_requests_total, :_}, :"$1"})
    |> List.flatten()
    |> Enum.sum()
  end

  defp kind(pid) do
    case Process.info(pid, [:registered_name, :dictionary]) do
      nil ->
        "(exited)"

      info ->
        case {info[:registered_name], Keyword.get(info[:dictionary], :"$initial_call")} do
          {name, _} when is_atom(name) and name != [] -> inspect(name)
          {_, {module, _, _}} -> inspect(module)
          _ -> "other"
        end
    end
  end
end
