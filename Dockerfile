# One image for every callmeter process: `docker run callmeter:0.1.0 api|orchestrator|gateway|metrics|worker`.
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home callmeter
WORKDIR /app
COPY pyproject.toml README.md ./
COPY callmeter callmeter
COPY services services
RUN pip install --no-cache-dir '.[all]'
USER callmeter
ENTRYPOINT ["callmeter"]
