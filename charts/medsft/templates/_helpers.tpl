{{/* Names. The fullname is capped at 40 characters so every suffix below still fits 63. */}}
{{- define "medsft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "medsft.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "medsft.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "medsft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medsft
{{- end -}}

{{- define "medsft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medsft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "medsft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "medsft.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Lease replicas elect their leader with (MEDSFT_LEASE_NAME; the RBAC names it). */}}
{{- define "medsft.leaseName" -}}
{{- include "medsft.fullname" . -}}
{{- end -}}

{{- define "medsft.jobServiceAccountName" -}}
{{- default (printf "%s-job" (include "medsft.fullname" .)) .Values.trainer.serviceAccount.name -}}
{{- end -}}

{{/* image: repository:tag, the tag defaulting to the chart's appVersion; digests as @sha256. */}}
{{- define "medsft.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if hasPrefix "@" $tag -}}
{{- printf "%s%s" .image.repository $tag -}}
{{- else if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The in-chart MinIO. */}}
{{- define "medsft.minio.fullname" -}}
{{- printf "%s-minio" (include "medsft.fullname" .) -}}
{{- end -}}

{{- define "medsft.minio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medsft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: minio
{{- end -}}

{{/* The default storage as the operator sees it (endpoint and credentials Secret). */}}
{{- define "medsft.storage.endpoint" -}}
{{- if .Values.storage.endpoint -}}
{{- .Values.storage.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "%s.%s.svc:9000" (include "medsft.minio.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "medsft.storage.secure" -}}
{{- if .Values.storage.endpoint -}}
{{- .Values.storage.secure -}}
{{- else -}}
false
{{- end -}}
{{- end -}}

{{- define "medsft.storage.secretName" -}}
{{- if .Values.storage.credentialsSecret.name -}}
{{- .Values.storage.credentialsSecret.name -}}
{{- else if .Values.minio.enabled -}}
{{- printf "%s-storage" (include "medsft.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The chart refuses values that cannot work together, with a message saying what to set. */}}
{{- define "medsft.validate" -}}
{{- if and .Values.storage.endpoint .Values.minio.enabled -}}
{{- fail "storage.endpoint and minio.enabled are both set: choose your own S3 endpoint (storage.endpoint) or the in-chart MinIO (minio.enabled=true), not both" -}}
{{- end -}}
{{- if not (or .Values.storage.endpoint .Values.minio.enabled) -}}
{{- fail "no default storage: set storage.endpoint (host:port of your S3/MinIO) and storage.credentialsSecret.name, or minio.enabled=true for a quick start" -}}
{{- end -}}
{{- if and .Values.minio.enabled .Values.storage.credentialsSecret.name -}}
{{- fail "minio.enabled creates its own credentials Secret: leave storage.credentialsSecret.name empty" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
{{- fail "serviceMonitor.enabled needs the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1) in the cluster; install it first (with `helm template`, pass --api-versions monitoring.coreos.com/v1/ServiceMonitor)" -}}
{{- end -}}
{{- end -}}

{{/* The default storage of runs, as the operator's MEDSFT_STORAGE_* variables. */}}
{{- define "medsft.storage.env" -}}
- name: MEDSFT_STORAGE_ENDPOINT
  value: {{ include "medsft.storage.endpoint" . | quote }}
- name: MEDSFT_STORAGE_BUCKET
  value: {{ .Values.storage.bucket | quote }}
- name: MEDSFT_STORAGE_SECURE
  value: {{ include "medsft.storage.secure" . | quote }}
{{- with .Values.storage.prefix }}
- name: MEDSFT_STORAGE_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.region }}
- name: MEDSFT_STORAGE_REGION
  value: {{ . | quote }}
{{- end }}
{{- with include "medsft.storage.secretName" . }}
- name: MEDSFT_STORAGE_SECRET
  value: {{ . | quote }}
{{- end }}
{{- end -}}
