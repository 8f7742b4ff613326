{{/* ---------------------------------------------------------------------------
Names and labels
--------------------------------------------------------------------------- */}}

{{- define "protege.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource prefix. KubeRay derives `<name>-head-svc` and `<name>-serve-svc` from the
RayService name, and Ray pod names add a hash and a group name, so keep it short (40).
*/}}
{{- define "protege.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "protege.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "protege.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: protege
{{- end }}

{{- define "protege.selectorLabels" -}}
app.kubernetes.io/name: {{ include "protege.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "improver") */}}
{{- define "protege.componentLabels" -}}
{{ include "protege.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of a Ray pod; protege.io/ray selects every Ray pod (metrics, NetworkPolicy). */}}
{{- define "protege.rayPodLabels" -}}
{{ include "protege.componentLabels" . }}
protege.io/ray: "true"
{{- end }}

{{- define "protege.componentSelector" -}}
{{ include "protege.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* KubeRay's services of the RayService: they follow the active cluster across upgrades. */}}
{{- define "protege.headService" -}}
{{- printf "%s-head-svc" (include "protege.fullname" .) }}
{{- end }}
{{- define "protege.serveService" -}}
{{- printf "%s-serve-svc" (include "protege.fullname" .) }}
{{- end }}

{{- define "protege.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "protege.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "protege.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- define "protege.gpuImage" -}}
{{- printf "%s:%s" .Values.gpuImage.repository (default .Chart.AppVersion .Values.gpuImage.tag) }}
{{- end }}

{{/* ---------------------------------------------------------------------------
Secrets: the chart's own Secret holds whatever was given as a plain value or generated.
--------------------------------------------------------------------------- */}}

{{- define "protege.secretName" -}}
{{- include "protege.fullname" . }}
{{- end }}

{{/* Does the chart create a Secret at all? */}}
{{- define "protege.createsSecret" -}}
{{- if or (not .Values.auth.existingSecret) (and .Values.store.url (not .Values.store.existingSecret)) (and (eq .Values.foundationModel.backend "openai") .Values.foundationModel.openai.apiKey (not .Values.foundationModel.openai.existingSecret)) (and .Values.kafka.sasl.password (not .Values.kafka.sasl.existingSecret)) }}true{{ end }}
{{- end }}

{{- define "protege.authSecretName" -}}
{{- default (include "protege.secretName" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "protege.storeSecret" -}}
{{- if .Values.store.existingSecret }}{{ .Values.store.existingSecret }}{{ else if .Values.store.url }}{{ include "protege.secretName" . }}{{ end }}
{{- end }}

{{- define "protege.kafkaBootstrap" -}}
{{- if .Values.kafka.bundled.enabled }}
{{- printf "%s-kafka:9092" (include "protege.fullname" .) }}
{{- else }}
{{- required "kafka.bootstrapServers is required unless kafka.bundled.enabled" .Values.kafka.bootstrapServers }}
{{- end }}
{{- end }}

{{- define "protege.artifactsClaim" -}}
{{- default (printf "%s-artifacts" (include "protege.fullname" .)) .Values.mlflow.artifacts.pvc.existingClaim }}
{{- end }}

{{- define "protege.mlflowTrackingUri" -}}
{{- if .Values.mlflow.trackingUri }}
{{- .Values.mlflow.trackingUri }}
{{- else if eq .Values.mlflow.artifacts.type "pvc" }}
{{- printf "sqlite:///%s/mlflow.db" .Values.mlflow.artifacts.pvc.mountPath }}
{{- else }}
{{- fail "mlflow.trackingUri is required when mlflow.artifacts.type is s3" }}
{{- end }}
{{- end }}

{{- define "protege.mlflowArtifactRoot" -}}
{{- if eq .Values.mlflow.artifacts.type "s3" }}
{{- required "mlflow.artifacts.s3.uri is required when mlflow.artifacts.type is s3" .Values.mlflow.artifacts.s3.uri }}
{{- else }}
{{- printf "file://%s/mlruns" .Values.mlflow.artifacts.pvc.mountPath }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------
What every Protégé container gets: settings, secrets, volumes.
--------------------------------------------------------------------------- */}}

{{- define "protege.homePath" -}}/var/lib/protege{{- end }}
{{- define "protege.tasksPath" -}}/etc/protege/tasks/tasks.yaml{{- end }}
{{- define "protege.apiKeysPath" -}}/etc/protege/auth/api-keys.json{{- end }}

{{- define "protege.tasksConfigMap" -}}
{{- default (printf "%s-tasks" (include "protege.fullname" .)) .Values.tasksExistingConfigMap }}
{{- end }}

{{/*
Changing these restarts the pods that read them (for the RayService: a new cluster, switched
over when it is ready). Generated secrets are left out, so that a `helm template` render
(where lookup finds nothing) does not roll the cluster on every sync.
*/}}
{{- define "protege.configChecksum" -}}
{{- $inputs := dict "env" (include (print .Template.BasePath "/configmap-env.yaml") .) "tasks" (include (print .Template.BasePath "/configmap-tasks.yaml") .) "auth" .Values.auth "store" .Values.store "kafka" .Values.kafka.sasl "openai" .Values.foundationModel.openai }}
{{- toJson $inputs | sha256sum }}
{{- end }}

{{/* Environment of every Protégé container (Ray pods and the improver). */}}
{{- define "protege.env" -}}
{{- /* Prediction ids are signed whether or not API keys are checked. */}}
- name: PROTEGE_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "protege.authSecretName" . }}
      key: signing-secret
{{- with include "protege.storeSecret" . }}
- name: PROTEGE_STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ if $.Values.store.existingSecret }}{{ $.Values.store.existingSecretKey }}{{ else }}store-url{{ end }}
{{- end }}
{{- if and (eq .Values.foundationModel.backend "openai") (or .Values.foundationModel.openai.existingSecret .Values.foundationModel.openai.apiKey) }}
- name: PROTEGE_OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default (include "protege.secretName" .) .Values.foundationModel.openai.existingSecret }}
      key: {{ if .Values.foundationModel.openai.existingSecret }}{{ .Values.foundationModel.openai.existingSecretKey }}{{ else }}openai-api-key{{ end }}
{{- end }}
{{- if or .Values.kafka.sasl.existingSecret .Values.kafka.sasl.password }}
- name: PROTEGE_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "protege.secretName" .) .Values.kafka.sasl.existingSecret }}
      key: {{ if .Values.kafka.sasl.existingSecret }}{{ .Values.kafka.sasl.existingSecretKey }}{{ else }}kafka-sasl-password{{ end }}
{{- end }}
{{- if and (eq .Values.mlflow.artifacts.type "s3") .Values.mlflow.artifacts.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mlflow.artifacts.s3.existingSecret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mlflow.artifacts.s3.existingSecret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes of every Protégé pod; (dict "ctx" $ "homeSizeLimit" "10Gi") */}}
{{- define "protege.volumes" -}}
{{- $ := .ctx -}}
- name: tasks
  configMap:
    name: {{ include "protege.tasksConfigMap" $ }}
{{- if not $.Values.auth.disabled }}
- name: auth
  secret:
    secretName: {{ include "protege.authSecretName" $ }}
    items:
      - key: api-keys.json
        path: api-keys.json
{{- end }}
{{- if eq $.Values.mlflow.artifacts.type "pvc" }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "protege.artifactsClaim" $ }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $.Values.rayCluster.scratch.tmpSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ $.Values.rayCluster.scratch.cacheSizeLimit }}
- name: home
  emptyDir:
    sizeLimit: {{ .homeSizeLimit }}
{{- with $.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "protege.volumeMounts" -}}
- name: tasks
  mountPath: /etc/protege/tasks
  readOnly: true
{{- if not .Values.auth.disabled }}
- name: auth
  mountPath: /etc/protege/auth
  readOnly: true
{{- end }}
{{- if eq .Values.mlflow.artifacts.type "pvc" }}
- name: artifacts
  mountPath: {{ .Values.mlflow.artifacts.pvc.mountPath }}
{{- end }}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/ray/.cache
- name: home
  mountPath: {{ include "protege.homePath" . }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Ray's ports: GCS, dashboard (KubeRay deploys Serve through it), client, Serve, metrics. */}}
{{- define "protege.rayHeadPorts" -}}
- {name: gcs-server, containerPort: 6379}
- {name: dashboard, containerPort: 8265}
- {name: client, containerPort: 10001}
- {name: serve, containerPort: 8000}
- {name: metrics, containerPort: 8080}
{{- end }}
{{- define "protege.rayWorkerPorts" -}}
- {name: serve, containerPort: 8000}
- {name: metrics, containerPort: 8080}
{{- end }}
