{{/* ---------------------------------------------------------------------------
The Ray Serve application and the pieces shared by the Ray head and worker groups.
--------------------------------------------------------------------------- */}}

{{/*
serveConfigV2: the same document `serve deploy` takes (deploy/serve-config.yaml is its
hand-written twin). Built as data and printed with toYaml, so that quoting is never wrong.
Replicas find their worker group by the Ray node label protege.io/pool.
*/}}
{{- define "protege.serveConfig" -}}
{{- $fm := .Values.foundationModel }}
{{- $gw := .Values.gateway }}
{{- $gateway := dict "name" "Gateway" "max_ongoing_requests" (int $gw.maxOngoingRequests) "ray_actor_options" (dict "num_cpus" $gw.numCpus "label_selector" (dict "protege.io/pool" "cpu")) }}
{{- if $gw.autoscalingConfig }}
{{- $_ := set $gateway "autoscaling_config" $gw.autoscalingConfig }}
{{- else }}
{{- $_ := set $gateway "num_replicas" (int $gw.replicas) }}
{{- end }}
{{- $fmActor := dict "num_cpus" $fm.numCpus "label_selector" (dict "protege.io/pool" "cpu") }}
{{- if eq $fm.backend "vllm" }}
{{- $fmActor = dict "num_cpus" $fm.numCpus "num_gpus" $fm.numGpus "label_selector" (dict "protege.io/pool" "gpu") }}
{{- end }}
{{- $foundation := dict "name" "FoundationModel" "max_ongoing_requests" (int $fm.maxOngoingRequests) "ray_actor_options" $fmActor }}
{{- if $fm.autoscalingConfig }}
{{- $_ := set $foundation "autoscaling_config" $fm.autoscalingConfig }}
{{- else }}
{{- $_ := set $foundation "num_replicas" (int $fm.replicas) }}
{{- end }}
{{- $app := dict "name" "protege" "route_prefix" "/" "import_path" .Values.serve.importPath "args" .Values.serve.args "deployments" (list $gateway $foundation) }}
{{- $config := dict "proxy_location" "EveryNode" "http_options" (dict "host" "0.0.0.0" "port" 8000) "applications" (list $app) }}
{{- toYaml $config }}
{{- end }}

{{/* Pod-level fields of a Ray group: (dict "ctx" $ "group" .Values.rayCluster.cpuWorkers) */}}
{{- define "protege.rayPodSpec" -}}
{{- $ := .ctx -}}
serviceAccountName: {{ include "protege.serviceAccountName" $ }}
enableServiceLinks: false
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $.Values.podSecurityContext | nindent 2 }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container fields shared by Ray containers (KubeRay supplies the `ray start` command). */}}
{{- define "protege.rayContainer" -}}
{{- $ := .ctx -}}
securityContext:
  {{- toYaml $.Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "protege.fullname" $ }}-env
env:
  # Clusters often have no egress; Ray's usage report is not needed.
  - name: RAY_USAGE_STATS_ENABLED
    value: "0"
  {{- include "protege.env" $ | trim | nindent 2 }}
  {{- with $.Values.rayCluster.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
