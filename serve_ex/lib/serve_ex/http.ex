defmodule ServeEx.HTTP do
  @moduledoc """
  Inference, health and metrics over cowboy, on 127.0.0.1 by default:

  - `POST /v1/models/{id}/{op}`: a request, batched with the AMQP traffic
    (`ServeEx.HTTP.Inference`).
  - `GET /livez`: 200 while the VM is up and this listener answers.
  - `GET /readyz` (alias `/healthz`): 200 when the node takes work (`ServeEx.Status`),
    503 otherwise; the JSON body says which condition is missing.
  - `GET /metrics`: Prometheus text (`ServeEx.Metrics`).

  The listener is embedded in our supervision tree with `:ranch.child_spec/5` (not
  `:cowboy.start_clear`, which would put it under ranch's own supervisor), so a
  shutdown reaches it and the node can stop.
  """

  @spec child_spec(ServeEx.Config.t()) :: Supervisor.child_spec()
  def child_spec(config) do
    dispatch =
      :cowboy_router.compile([
        {:_,
         [
           {"/livez", __MODULE__.Live, []},
           {"/readyz", __MODULE__.Ready, []},
           {"/healthz", __MODULE__.Ready, []},
           {"/metrics", __MODULE__.Metrics, []},
           {"/v1/models/:model/:op", __MODULE__.Inference, []}
         ]}
      ])

    :ranch.child_spec(
      __MODULE__,
      :ranch_tcp,
      %{socket_opts: [ip: config.http_ip, port: config.http_port]},
      :cowboy_clear,
      %{env: %{dispatch: dispatch}, connection_type: :supervisor}
    )
  end

  @doc "The port the listener is bound to (useful with `HTTP_PORT=0`)."
  @spec port() :: :inet.port_number()
  def port, do: :ranch.get_port(__MODULE__)

  defmodule Live do
    @moduledoc false
    def init(req, state), do: {:ok, ServeEx.HTTP.reply_json(req, 200, %{"live" => true}), state}
  end

  defmodule Ready do
    @moduledoc false
    def init(req, state) do
      {ready, details} = ServeEx.Status.readiness()
      {:ok, ServeEx.HTTP.reply_json(req, if(ready, do: 200, else: 503), details), state}
    end
  end

  defmodule Metrics do
    @moduledoc false
    def init(req, state) do
      headers = %{"content-type" => "text/plain; version=0.0.4"}
      {:ok, :cowboy_req.reply(200, headers, ServeEx.Metrics.text(), req), state}
    end
  end

  @doc false
  def reply_json(req, status, map),
    do: :cowboy_req.reply(status, %{"content-type" => "application/json"}, :jsx.encode(map), req)
end
