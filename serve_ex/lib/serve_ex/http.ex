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

  The endpoint has no authentication. Inference and metrics answer only requests whose
  `Host` names one of `HTTP_HOSTS` (421 otherwise), so that a web page the operator
  opens cannot reach them through DNS rebinding; an `HTTP_IP` that is not a loopback
  address is logged as a warning at start.
  """
  require Logger

  @spec child_spec(ServeEx.Config.t()) :: Supervisor.child_spec()
  def child_spec(config) do
    warn_unless_loopback(config.http_ip)
    hosts = config.http_hosts

    dispatch =
      :cowboy_router.compile([
        {:_,
         [
           {"/livez", __MODULE__.Live, []},
           {"/readyz", __MODULE__.Ready, []},
           {"/healthz", __MODULE__.Ready, []},
           {"/metrics", __MODULE__.Metrics, hosts},
           {"/v1/models/:model/:op", __MODULE__.Inference, hosts}
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
    def init(req, hosts) do
      if ServeEx.HTTP.served_host?(req, hosts) do
        headers = %{"content-type" => "text/plain; version=0.0.4"}
        {:ok, :cowboy_req.reply(200, headers, ServeEx.Metrics.text(), req), hosts}
      else
        {:ok, ServeEx.HTTP.misdirected(req), hosts}
      end
    end
  end

  @doc false
  def reply_json(req, status, map),
    do: :cowboy_req.reply(status, %{"content-type" => "application/json"}, :jsx.encode(map), req)

  @doc "Whether the request's `Host` (its name, without the port) is one of `hosts`."
  @spec served_host?(:cowboy_req.req(), [String.t()]) :: boolean()
  def served_host?(req, hosts), do: String.downcase(:cowboy_req.host(req)) in hosts

  @doc "The 421 reply to a request whose `Host` is not served."
  @spec misdirected(:cowboy_req.req()) :: :cowboy_req.req()
  def misdirected(req) do
    body =
      ServeEx.Reply.error(
        :malformed_request,
        "the Host header names no host served here (HTTP_HOSTS)"
      )

    :cowboy_req.reply(421, %{"content-type" => "application/json"}, body, req)
  end

  defp warn_unless_loopback(ip) do
    unless loopback?(ip) do
      Logger.warning(
        "HTTP_IP=#{:inet.ntoa(ip)} is not a loopback address: the HTTP endpoint has no " <>
          "authentication, so put it behind an authenticating proxy (docs/service.md)"
      )
    end
  end

  defp loopback?({127, _, _, _}), do: true
  defp loopback?({0, 0, 0, 0, 0, 0, 0, 1}), do: true
  defp loopback?(_ip), do: false
end
