{{/* ---------------------------------------------------------------------------
The Ray Serve application and the pieces shared by the Ray head and worker groups.
--------------------------------------------------------------------------- */}}

{{/*
serveConfigV2: the same document `serve deploy` takes (deploy/serve-config.yaml is its
hand-written twin). Built as data and printed with toYaml, so that quoting is never wrong.
Replicas find their worker group by the Ray node label protege.io/pool; the application's
args carry the settings and the tasks, so that a change to them is applied in place.
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
{{- $app := dict "name" "protege" "route_prefix" "/" "import_path" .Values.serve.importPath "args" (include "protege.serveArgs" . | fromJson) "deployments" (list $gateway $foundation) }}
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

{{/* Metadata of a Ray pod template: (dict "ctx" $ "component" "ray-head") */}}
{{- define "protege.rayPodMetadata" -}}
labels:
  {{- include "protege.rayPodLabels" (dict "ctx" .ctx "component" .component) | nindent 2 }}
{{- with .ctx.Values.rayCluster.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Environment of a Ray container by role (dict "ctx" $ "role" "head|cpu|gpu|train").
Settings are not here but in serveConfigV2. The head builds the application, but build_app
binds only the non-secret arguments: each replica builds its own Settings from its pod's
environment. So the secrets the Gateway needs go to CPU workers, and to the head only when
replicas may run there (rayCluster.head.schedulable). GPU workers (the FM on vLLM) and
training workers get no Protégé secret at all.
*/}}
{{- define "protege.rayEnv" -}}
{{- $ := .ctx -}}
{{- include "protege.env.paths" $ }}
{{- if or (eq .role "cpu") (and (eq .role "head") $.Values.rayCluster.head.schedulable) }}
{{- include "protege.env.signingSecret" $ | nindent 0 }}
{{- include "protege.env.kafkaPassword" $ }}
{{- include "protege.env.openaiKey" $ }}
{{- end }}
{{- if eq .role "gpu" }}
- name: HF_HOME
  value: {{ include "protege.hfHome" $ }}
{{- if or $.Values.foundationModel.modelCache.prefetch $.Values.foundationModel.modelCache.existingClaim }}
# The init container fetched the weights: vLLM never reaches for the hub.
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- else if eq .role "train" }}
{{- include "protege.env.hfToken" $ }}
{{- else }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- with $.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with $.Values.rayCluster.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A Ray container: (dict "ctx" $ "role" ... "name" "ray-worker" "image" ... "pullPolicy" ... "resources" ...) */}}
{{- define "protege.rayContainer" -}}
{{- $ := .ctx -}}
- name: {{ .name }}
  image: {{ .image }}
  imagePullPolicy: {{ .pullPolicy }}
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  env:
    {{- include "protege.rayEnv" (dict "ctx" $ "role" .role) | trim | nindent 4 }}
  ports:
    {{- if eq .role "head" }}
    {{- include "protege.rayHeadPorts" $ | nindent 4 }}
    {{- else }}
    {{- include "protege.rayWorkerPorts" $ | nindent 4 }}
    {{- end }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  {{- if has .role (list "head" "cpu") }}
  # Before Ray stops: wait (bounded) until this pod's gateways have sent their spooled events.
  lifecycle:
    preStop:
      exec:
        command: ["protege", "events", "drain", "--spool-dir", {{ include "protege.spoolPath" $ | quote }}, "--timeout-s", {{ $.Values.rayCluster.spool.drainTimeoutSeconds | quote }}]
  {{- end }}
  volumeMounts:
    {{- include "protege.volumeMounts" (dict "ctx" $ "role" .role) | trim | nindent 4 }}
    {{- if eq .role "gpu" }}
    - name: model-cache
      mountPath: {{ include "protege.hfHome" $ }}
    - name: dshm
      mountPath: /dev/shm
    {{- end }}
{{- end }}

{{/* Resources of a GPU pod: the values' plus the nvidia.com/gpu limit. */}}
{{- define "protege.gpuResources" -}}
{{- $limits := merge (dict "nvidia.com/gpu" (int .gpus)) (deepCopy (.resources.limits | default dict)) }}
{{- toYaml (merge (dict "limits" $limits) (omit .resources "limits")) }}
{{- end }}
